"""timm baselines: registered only through the entry point, depth = number of blocks, train through the runner."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf
from timm.models.resnet import BasicBlock
from timm.models.vision_transformer import Block

from baselines.resnet import stage_blocks
from capsbench.config import ModelConfig
from capsbench.errors import UserError
from capsbench.metrics.layers import capsule_layers
from capsbench.registry import MODELS, build

REPO = Path(__file__).resolve().parent.parent
BASELINES = ("timm_resnet", "timm_vit")
TINY = {"timm_resnet": {"width": 4}, "timm_vit": {"embed_dim": 16, "num_heads": 2}}
BLOCK_TYPE = {"timm_resnet": BasicBlock, "timm_vit": Block}


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def _model(arch: str, depth: int, **options):
    cfg = ModelConfig(arch=arch, depth=depth, options={**TINY[arch], **options})
    return build(MODELS, arch, cfg, num_classes=10, in_channels=1, image_size=(16, 16))


# ------------------------------------------------------------------------------------------------
# Registration: only through the `capsbench.plugins` entry point


def test_cli_lists_baselines_from_the_installed_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "capsbench", "list", "models"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert set(BASELINES) <= set(result.stdout.split())


def test_baselines_exist_only_through_the_entry_point():
    # One process: with the entry points faked empty the names are absent (from the CLI and the
    # registry); putting back only the real `baselines` entry point brings them, attributed to it.
    result = _python(
        """
        import contextlib, io, json
        from importlib import metadata
        real = [ep for ep in metadata.entry_points(group="capsbench.plugins") if ep.name == "baselines"]
        state = {"eps": []}
        metadata.entry_points = lambda **kw: list(state["eps"]) if kw.get("group") == "capsbench.plugins" else []
        from capsbench.cli import main
        from capsbench.registry import MODELS, load_plugins
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["list", "models"])
        without = {"code": code, "listed": out.getvalue().split(), "names": MODELS.names()}
        state["eps"] = real
        load_plugins(force=True)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(["list", "models"])
        with_ep = {"listed": out.getvalue().split(),
                   "sources": {n: MODELS.source(n) for n in ("timm_resnet", "timm_vit", "capsnet")}}
        print(json.dumps({"real": len(real), "without": without, "with": with_ep}))
        """
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["real"] == 1, "the installed capsbench declares the `baselines` entry point"
    assert report["without"]["code"] == 0
    assert report["without"]["listed"] == ["capsnet"]
    assert not set(BASELINES) & set(report["without"]["names"])
    assert set(BASELINES) <= set(report["with"]["listed"])
    assert report["with"]["sources"] == {"timm_resnet": "baselines", "timm_vit": "baselines", "capsnet": "capsbench"}


def test_capsbench_package_never_imports_or_registers_the_baselines():
    # docstrings may mention the names; code must not import the package or name its builders
    pattern = re.compile(r"^\s*(from|import)\s+baselines\b|[\'\"]baselines[.:]", re.MULTILINE)
    offenders = [
        str(path.relative_to(REPO)) for path in (REPO / "capsbench").rglob("*.py") if pattern.search(path.read_text())
    ]
    assert offenders == []
    assert pattern.search('MODELS.register("timm_vit", "baselines.vit:build_timm_vit")')  # the check can fail


def test_register_again_is_harmless():
    import baselines

    before = {name: MODELS.get(name) for name in BASELINES}
    baselines.register()
    assert {name: MODELS.get(name) for name in BASELINES} == before
    assert all(MODELS.source(name) == "baselines" for name in BASELINES)


# ------------------------------------------------------------------------------------------------
# Depth knob, telemetry attributes, options


@pytest.mark.parametrize("arch", BASELINES)
def test_depth_is_the_number_of_blocks(arch):
    sizes = []
    for depth in range(5):
        model = _model(arch, depth)
        x = torch.randn(3, 1, 16, 16)
        logits = model(x)
        assert logits.shape == (3, 10) and torch.isfinite(logits).all()
        assert sum(isinstance(m, BLOCK_TYPE[arch]) for m in model.modules()) == depth
        assert [b.name for b in model.telemetry_blocks] == [f"block{i}" for i in range(1, depth + 1)]
        assert model.depth == depth
        assert capsule_layers(model) == []  # activation telemetry: n/a
        assert model.reference_loss == "cross_entropy"
        sizes.append(sum(p.numel() for p in model.parameters()))
    assert sizes == sorted(set(sizes)), f"parameters must grow with depth: {sizes}"


@given(st.integers(0, 60))
def test_resnet_blocks_fill_three_stages_evenly(depth):
    stages = stage_blocks(depth)
    assert len(stages) == 3 and sum(stages) == depth
    assert max(stages) - min(stages) <= 1 and list(stages) == sorted(stages, reverse=True)


def test_resnet_stages_downsample_and_widen():
    model = _model("timm_resnet", 9)  # ResNet-20 layout
    assert model.stage_blocks == (3, 3, 3)
    shapes = []
    hooks = [b.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:]))) for b in model.blocks]
    model(torch.zeros(1, 1, 16, 16))
    for h in hooks:
        h.remove()
    assert shapes == [(4, 16, 16)] * 3 + [(8, 8, 8)] * 3 + [(16, 4, 4)] * 3


def test_baselines_backpropagate_to_every_block():
    for arch in BASELINES:
        model = _model(arch, 3, **({"zero_init_last": False} if arch == "timm_resnet" else {}))
        model(torch.randn(4, 1, 16, 16)).logsumexp(1).sum().backward()
        for block in model.telemetry_blocks:
            grads = [p.grad for p in block.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
            assert sum(float(g.norm()) for g in grads) > 0, f"{arch} {block.name} gets no gradient"


@pytest.mark.parametrize(
    "arch, options, message",
    [
        (
            "timm_resnet",
            {"widht": 8},
            "model.options.widht: unknown option of model 'timm_resnet' (did you mean 'width'?)",
        ),
        ("timm_resnet", {"width": 0}, "model.options.width"),
        ("timm_resnet", {"width": 2.5}, "model.options.width: expected an integer >= 1, got 2.5"),
        ("timm_vit", {"patch_sise": 2}, "(did you mean 'patch_size'?)"),
        ("timm_vit", {"patch_size": 5}, "model.options.patch_size: 5 does not divide the 16x16 images"),
        ("timm_vit", {"num_heads": 3}, "model.options.num_heads: 3 does not divide embed_dim 16"),
        ("timm_vit", {"drop_path_rate": 1.5}, "model.options.drop_path_rate"),
    ],
)
def test_bad_options_are_one_line_user_errors(arch, options, message):
    with pytest.raises(UserError) as info:
        _model(arch, 1, **options)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_negative_depth_is_a_user_error_at_load():
    from capsbench import spec

    with pytest.raises(UserError, match="^model.depth: expected an integer >= 0"):
        spec.load(REPO / "specs" / "baselines_quick.yaml", ["model.depth=-1"])


@pytest.mark.parametrize("arch", BASELINES)
def test_checkpointing_changes_neither_gradients_nor_batchnorm_statistics(arch):
    torch.manual_seed(0)
    plain = _model(arch, 2)
    cfg = ModelConfig(arch=arch, depth=2, checkpointing=True, options=TINY[arch])
    ckpt = build(MODELS, arch, cfg, num_classes=10, in_channels=1, image_size=(16, 16))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(4, 1, 16, 16)
    for model in (plain, ckpt):
        model.train()
        model(x).logsumexp(1).sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    for (name, a), (_, b) in zip(plain.named_buffers(), ckpt.named_buffers()):
        assert torch.equal(a, b), f"{name} moved differently under checkpointing"


# ------------------------------------------------------------------------------------------------
# Through the real runner, on digits


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("baselines_quick/*/record.json"))]


def test_quick_spec_trains_both_families_through_the_runner(tmp_path):
    from capsbench.cli import main

    common = ["data.test_subset=200", "train.batch_size=16", "output.progress=false", "output.quiet=true"]
    resnet = ["model.arch=timm_resnet", "model.depth=3", "train.epochs=2", "data.subset=600", "train.optimizer.lr=3e-3"]
    vit = ["model.arch=timm_vit", "model.depth=2", "model.options={embed_dim: 32, num_heads: 2}",
           "train.epochs=1", "data.subset=300"]  # fmt: skip
    for overrides in (resnet, vit):
        assert main(["run", str(REPO / "specs/baselines_quick.yaml"), "--out", str(tmp_path), *common, *overrides]) == 0

    records = {r["config"]["model"]["arch"]: r for r in _records(tmp_path)}
    assert set(records) == set(BASELINES)
    for record in records.values():
        m = record["metrics"]
        assert record["status"] == "ok" and record["loss"] == "cross_entropy"
        assert record["num_params"] > 0 and 0.0 <= m["test_accuracy"] <= 1.0
        # no capsule layers: activation telemetry is n/a (null / empty), never zeros
        assert m["avg_dead_conv"] is None and m["val_avg_dead_conv"] is None
        assert m["layers"] == {"test": {}, "val": {}} and m["layer_order"] == []
        assert m["grad_norms"]["backbone"]["weight"] > 0
    assert records["timm_resnet"]["metrics"]["test_accuracy"] > 0.4, "chance is 0.1"


def test_quick_spec_sits_beside_the_quickstart():
    from capsbench import spec

    quick = spec.load(REPO / "specs/baselines_quick.yaml")
    start = spec.load(REPO / "specs/quickstart.yaml")
    assert {r.config.model.arch for r in quick} == {"timm_resnet", "timm_vit", "capsnet"}
    assert {r.config.model.depth for r in quick} == {r.config.model.depth for r in start}
    for key in ("protocol", "protocol_version", "data.name", "data.image_size", "data.val_size"):
        assert {str(OmegaConf.select(r.config, key)) for r in quick + start} == {
            str(OmegaConf.select(start[0].config, key))
        }, key


@pytest.mark.parametrize("arch", BASELINES)
def test_depth_sweeps_match_the_capsule_sweeps(arch):
    from capsbench import spec

    path = REPO / f"specs/{arch}_depth_sweep.yaml"
    sweep = spec.resolve_file(path)["sweep"]
    residual = spec.resolve_file(REPO / "specs/residual_em_depth_sweep.yaml")["sweep"]
    assert sweep == residual  # same data sets, depths and seeds
    cfgs = [r.config for r in spec.load(path, ["data.name=mnist", "seed=0"])]
    assert {c.model.arch for c in cfgs} == {arch} and [c.model.depth for c in cfgs] == list(range(1, 11))
    assert {(c.data.image_size, c.train.loss) for c in cfgs} == {(32, "cross_entropy")}
    # the options written in the spec are exactly the builder's: a typo would only show at run time
    model = build(MODELS, arch, cfgs[0].model, num_classes=10, in_channels=1, image_size=(32, 32))
    assert model.depth == 1
