"""Spec loading: inheritance, overrides, sweeps, validation errors and the spec hash."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from capsbench import spec
from capsbench.errors import SpecError, UserError


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def protocol(tmp_path):
    write(tmp_path, "protocols/base.yaml", """
        protocol: test
        protocol_version: "1"
        train:
          epochs: 7
          optimizer: {name: adam, lr: 1e-3, weight_decay: 0}
        data: {name: digits, image_size: 16}
    """)
    return tmp_path


def test_defaults_fill_every_key(tmp_path):
    (run,) = spec.load(write(tmp_path, "s.yaml", "model: {routing: em}\n"))
    cfg = run.config
    assert cfg.model.routing == "em" and cfg.model.depth == 1 and cfg.train.epochs == 10
    assert cfg.name == "s"  # the file name when the spec names none
    assert run.point == {}


def test_extends_merges_and_child_wins(protocol):
    path = write(protocol, "child.yaml", """
        extends: protocols/base.yaml
        train: {epochs: 3}
        model: {routing: vb}
    """)
    (run,) = spec.load(path)
    assert run.config.train.epochs == 3  # child wins
    assert run.config.train.optimizer.name == "adam"  # inherited, nested
    assert run.config.train.optimizer.lr == pytest.approx(1e-3)  # '1e-3' read as a float, not a string
    assert run.config.protocol == "test" and run.config.data.image_size == 16


def test_extends_chain_and_list(protocol):
    write(protocol, "mid.yaml", "extends: protocols/base.yaml\nseed: 5\n")
    write(protocol, "other.yaml", "model: {depth: 4}\n")
    path = write(protocol, "leaf.yaml", "extends: [mid.yaml, other.yaml]\n")
    (run,) = spec.load(path)
    assert (run.config.seed, run.config.model.depth, run.config.train.epochs) == (5, 4, 7)


def test_extends_cycle_and_missing_are_errors(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(SpecError, match="cycle"):
        spec.load(tmp_path / "a.yaml")
    with pytest.raises(SpecError, match="nope.yaml"):
        spec.load(write(tmp_path, "c.yaml", "extends: nope.yaml\n"))


def test_overrides_are_typed_and_win(protocol):
    path = write(protocol, "s.yaml", "extends: protocols/base.yaml\n")
    (run,) = spec.load(path, ["train.epochs=2", "model.routing=dynamic", "data.subset=100", "train.grad_clip=null"])
    assert run.config.train.epochs == 2 and run.config.model.routing == "dynamic"
    assert run.config.data.subset == 100 and run.config.train.grad_clip is None


def test_sweep_is_a_cartesian_product_in_written_order(tmp_path):
    path = write(tmp_path, "s.yaml", """
        sweep:
          model.depth: [1, 2, 3]
          seed: [0, 1]
    """)
    runs = spec.load(path)
    assert [(r.config.model.depth, r.config.seed) for r in runs] == [
        (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)
    ]
    assert len({r.run_id for r in runs}) == 6
    # seeds share a spec hash (the experiment); depths do not
    assert runs[0].spec_hash == runs[1].spec_hash != runs[2].spec_hash
    assert runs[2].label.startswith("depth2-seed0-")


def test_nested_sweep_keys_and_override_fixes_a_swept_key(tmp_path):
    path = write(tmp_path, "s.yaml", "sweep:\n  model: {depth: [1, 2], routing: [em, self]}\n")
    assert len(spec.load(path)) == 4
    runs = spec.load(path, ["model.depth=5"])
    assert [(r.config.model.depth, r.config.model.routing) for r in runs] == [(5, "em"), (5, "self")]
    runs = spec.load(path, ["sweep.seed=[0,1,2]"])
    assert len(runs) == 12


def test_hash_is_stable_and_ignores_non_result_keys(tmp_path):
    path = write(tmp_path, "s.yaml", "model: {routing: em, depth: 2}\n")
    (a,) = spec.load(path)
    (b,) = spec.load(path, ["output.dir=/elsewhere", "device=cpu", "executor.name=slurm", "output.progress=false"])
    (c,) = spec.load(path, ["train.epochs=11"])
    assert a.spec_hash == b.spec_hash
    assert a.spec_hash != c.spec_hash
    assert len(a.spec_hash) == 64
    # stable across processes and key order: pin the canonical form's hash
    reordered = write(tmp_path, "r.yaml", "model: {depth: 2, routing: em}\n")
    assert spec.load(reordered)[0].spec_hash == a.spec_hash


def test_hash_pinned_value(tmp_path):
    """A change of defaults or of the hash recipe changes every leaderboard key: make it visible."""
    from omegaconf import OmegaConf

    from capsbench.config import RunConfig

    cfg = OmegaConf.structured(RunConfig)
    digest = spec.spec_hash(cfg)
    assert digest == spec.spec_hash(OmegaConf.structured(RunConfig))
    assert spec.canonical(cfg).keys() >= {"model", "data", "train", "metrics", "protocol"}
    assert "output" not in spec.canonical(cfg) and "seed" not in spec.canonical(cfg)


@pytest.mark.parametrize(
    ("text", "overrides", "match"),
    [
        ("model: {routing: em\n", [], r"s\.yaml:\d+:\d+: malformed YAML"),
        ("seed: 1\nseed: 2\n", [], "duplicate key 'seed'"),
        ("- a\n- b\n", [], "must be a YAML mapping"),
        ("model: {depht: 3}\n", [], r"model\.depht: unknown key \(did you mean 'depth'\?\)"),
        ("trian: {epochs: 3}\n", [], r"trian: unknown key \(did you mean 'train'\?\)"),
        ("train: {epochs: three}\n", [], r"train\.epochs: expected an integer, got 'three'"),
        ("train: {epochs: 2.5}\n", [], r"train\.epochs: expected an integer"),
        ("model: {residual: 1}\n", [], r"model\.residual: expected true or false"),
        ("model: {depth: -1}\n", [], r"model\.depth: expected an integer >= 0"),
        ("model: {routing: emm}\n", [], r"model\.routing: unknown routing 'emm' \(did you mean 'em'\?\)"),
        ("data: {name: mnits}\n", [], r"data\.name: unknown dataset 'mnits' \(did you mean 'mnist'\?\)"),
        ("train: {loss: sprad}\n", [], r"train\.loss: unknown loss 'sprad'"),
        ("train: {amp: fp8}\n", [], r"train\.amp: expected one of off, bf16, fp16"),
        ("model: 3\n", [], r"model: expected a mapping"),
        ("sweep: {model.depth: 3}\n", [], r"sweep\.model\.depth: expected a non-empty list"),
        ("sweep: {model.depth: [1, -2]}\n", [], r"model\.depth: expected an integer >= 0.*sweep point model\.depth=-2"),
        ("{}\n", ["epochs"], r"override 'epochs': expected key=value"),
        ("{}\n", ["model.depth=-3"], r"model\.depth"),
        ("{}\n", ["model.depth.x=1"], r"model\.depth: expected an integer"),
        ("model: {depth: 2}\n", ["model.depth.x=1"], r"model\.depth: is a value"),
    ],
)
def test_bad_specs_name_the_key(tmp_path, text, overrides, match):
    path = write(tmp_path, "s.yaml", text)
    with pytest.raises(UserError, match=match) as info:
        spec.load(path, overrides)
    assert "\n" not in str(info.value)  # one line


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        spec.load(tmp_path / "absent.yaml")


@pytest.fixture
def strict_routing():
    """A routing declaring its options as a plugin would, registered for one test."""
    from capsbench.capsules.routing.base import Routing
    from capsbench.options import Option
    from capsbench.registry import ROUTINGS

    class Strict(Routing):
        OPTIONS = {"eps": Option(float, 1e-6, gt=0), "temperature": Option(float, 1.0, gt=0)}

    ROUTINGS.register("strict_test", Strict)
    yield "strict_test"
    ROUTINGS.unregister("strict_test")


def test_routing_options_checked_against_the_routing(tmp_path, strict_routing):
    good = write(tmp_path, "g.yaml", "model: {routing: strict_test, routing_options: {eps: 0.1}}\n")
    assert spec.load(good)[0].config.model.routing_options.eps == 0.1
    bad = write(tmp_path, "b.yaml", "model: {routing: strict_test, routing_options: {epsilon: 0.1}}\n")
    with pytest.raises(SpecError, match=r"model\.routing_options\.epsilon: unknown option .*did you mean 'eps'"):
        spec.load(bad)
    with pytest.raises(SpecError, match=r"^model\.routing_options\.eps: expected a number > 0, got -1"):
        spec.load(good, ["model.routing_options.eps=-1"])


@pytest.mark.parametrize(
    ("routing", "override", "message"),
    [
        ("em", "final_lamda=1.0", r"model\.routing_options\.final_lamda: unknown option of routing 'em' "
                                  r"\(did you mean 'final_lambda'\?\)"),
        ("vb", "final_lamda=1.0", r"model\.routing_options\.final_lamda: unknown option of routing 'vb'"),
        ("em", "cost=median", r"model\.routing_options\.cost: expected one of sum, mean, standardise, got 'median'"),
        ("vb", "bn_momentum=2", r"model\.routing_options\.bn_momentum: expected a number in \[0, 1\], got 2"),
        ("vb", "pose_bn=1", r"model\.routing_options\.pose_bn: expected true or false, got 1"),
        ("dynamic", "detach_agreemnt=true", r"did you mean 'detach_agreement'"),
        ("self", "eps=0", r"model\.routing_options\.eps: expected a number > 0, got 0"),
        ("self", "iterations=2", r"model\.routing_options\.iterations: not a routing option \(set model\.iterations"),
    ],
)
def test_every_routing_option_is_checked_at_load(tmp_path, routing, override, message):
    """Typos, types and ranges of routing options fail `validate`, not the run after data loads (issue 12.8)."""
    path = write(tmp_path, "s.yaml", f"model: {{routing: {routing}}}\n")
    with pytest.raises(SpecError, match=message):
        spec.load(path, [f"model.routing_options.{override}"])


def test_routing_options_are_checked_without_importing_torch(tmp_path):
    path = write(tmp_path, "s.yaml", "model: {routing: em}\n")
    code = (
        "import sys\nfrom capsbench import spec\nfrom capsbench.errors import SpecError\n"
        f"spec.load({str(path)!r}, ['model.routing_options.final_lambda=0.5'])\n"
        f"try:\n    spec.load({str(path)!r}, ['model.routing_options.final_lamda=0.5'])\n"
        "except SpecError as exc:\n    print(exc)\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    error, torch_line = out.stdout.splitlines()
    assert error.startswith(
        "model.routing_options.final_lamda: unknown option of routing 'em' (did you mean 'final_lambda'?); "
        "expected one of: coefficients, cost, final_lambda, initial_coefficients, lambda_schedule, min_var, "
        "normalise, renormalise"
    ), out.stderr
    assert torch_line == "no torch"


def test_routing_declarations_are_the_ones_the_routings_use():
    """The table validate reads without torch is the table each routing's constructor resolves with."""
    import inspect

    from capsbench.registry import ROUTINGS

    for name in ROUTINGS.names():
        declared, cls = ROUTINGS.declared_options(name), ROUTINGS.get(name)
        assert declared is cls.OPTIONS, name
        keywords = [p for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY
                    or (p.default is not p.empty and p.name not in ("iterations", "in_pose_dim"))]
        for param in keywords:  # explicit keyword options: same names and defaults as declared
            assert declared[param.name].default == param.default, (name, param.name)


def test_int_accepted_for_float(tmp_path):
    (run,) = spec.load(write(tmp_path, "s.yaml", "train: {optimizer: {lr: 1}}\n"))
    assert isinstance(run.config.train.optimizer.lr, float)


def _bad_value(option):
    """A value just outside what ``option`` declares."""
    if option.choices is not None or option.pattern is not None:
        return "nope"
    for bound, step in ((option.ge, -1), (option.gt, 0), (option.le, 1), (option.lt, 0)):
        if bound is not None:
            return type(bound)(bound + step) if option.type is float else int(bound + step)
    raise AssertionError(f"{option} declares no range")


@pytest.mark.parametrize(("key", "option"), spec._declared_ranges(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_declared_range_is_checked_at_load_naming_the_key(tmp_path, key, option):
    """Ranges are declared once (config.py) and checked once, when the spec loads (issue 12, Structure)."""
    path = write(tmp_path, "s.yaml", "name: ranges\n")
    value = _bad_value(option)
    with pytest.raises(SpecError, match=rf"^{re.escape(key)}: expected .*, got {re.escape(repr(value))}"):
        spec.load(path, [f"{key}={value}"])


def test_ranges_once_include_what_the_runner_and_slurm_used_to_check_late(tmp_path):
    """These were accepted at load and failed only in the scheduler, the SLURM submission or not at all."""
    path = write(tmp_path, "s.yaml", "name: ranges\n")
    for override in ("executor.cpus=0", "executor.time_min=0", "executor.gpus=-1", "train.scheduler.gamma=0",
                     "train.scheduler.step_size=0", "train.optimizer.momentum=-0.5", "data.num_workers=-1"):
        key = override.split("=")[0]
        with pytest.raises(SpecError, match=rf"^{re.escape(key)}: expected"):
            spec.load(path, [override])
