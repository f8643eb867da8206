"""Remedies for vanishing activations (capsbench/models/remedies.py): the table, spec-load checks, what each does."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from capsbench import spec
from capsbench.cli import main
from capsbench.config import HASH_NEUTRAL_DEFAULTS, ModelConfig
from capsbench.errors import SpecError
from capsbench.models.capsnet import build_capsnet
from capsbench.models.length_init import TARGET_LENGTH, length_gain, window_slots
from capsbench.models.remedies import REMEDIES, remedy_label

REPO = Path(__file__).resolve().parent.parent
ROUTINGS = ("em", "vb", "self", "dynamic", "uniform")
# every remedy on its own and the combinations a sweep uses, as ModelConfig keywords
REMEDY_SETTINGS = {
    "res": dict(residual=True),
    "res+skip=pre": dict(residual=True, residual_style="pre", pose_norm=True),
    "pose-norm": dict(pose_norm=True),
    "momentum=0.9": dict(momentum_residual=0.9),
    "pose-norm+norm=layer": dict(pose_norm=True, pose_norm_kind="layer"),
    "res+skip=pre+pose-norm+norm=layer": dict(residual=True, residual_style="pre", pose_norm=True,
                                              pose_norm_kind="layer"),
}


def _capsnet(routing: str, depth: int, **remedies):
    cfg = ModelConfig(
        routing=routing, backbone="tiny", depth=depth, capsule_types=4, primary_types=4, pose_dim=4, iterations=2,
        **remedies,
    )  # fmt: skip
    return build_capsnet(cfg, num_classes=5, in_channels=1, image_size=(16, 16))


def _jitter(model):
    """Move every weight off its initial value (self-routing starts with zero routing weights: no signal at init)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _outputs(model, x):
    """{layer name: its Capsules output} for one forward (hooks see each layer's own output)."""
    seen, handles = {}, []
    for name, layer in model.caps.items():
        handles.append(layer.register_forward_hook(lambda m, a, o, n=name: seen.__setitem__(n, o)))
        if layer.kind == "class":
            handles.append(layer.register_forward_pre_hook(lambda m, a: seen.__setitem__("class_input", a[0])))
    out = model(x)
    for h in handles:
        h.remove()
    return out, seen


# ------------------------------------------------------------------------------------------------- the table


def test_every_remedy_key_is_declared_with_its_off_value_as_default_and_new_keys_are_hash_neutral():
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    for remedy in REMEDIES:
        section, name = remedy.key.split(".")
        assert section == "model" and name in fields, remedy.key
        assert fields[name].default == remedy.off, remedy.key
        if name not in ("residual", "pose_norm"):  # older than the records: their default is in every hash
            assert HASH_NEUTRAL_DEFAULTS[remedy.key] == remedy.off, remedy.key
    assert len({r.label for r in REMEDIES}) == len(REMEDIES)


@pytest.mark.parametrize(
    ("model", "label"),
    [
        ({"routing": "em"}, "none"),
        ({"routing": "em", "residual": False, "pose_norm": None, "residual_style": "post"}, "none"),
        ({"routing": "self", "residual": True}, "res"),
        ({"routing": "self", "residual": True, "residual_style": "pre"}, "res+skip=pre"),
        ({"routing": "em", "pose_norm": False}, "no-pose-norm"),
        ({"routing": "dynamic", "pose_norm": True, "pose_norm_kind": "layer"}, "pose-norm+norm=layer"),
        ({"routing": "dynamic", "init": "length"}, "init=length"),
        ({"routing": "self", "momentum_residual": 0.9}, "momentum=0.9"),
    ],
)
def test_remedy_label(model, label):
    assert remedy_label({"model": model}) == label
    assert remedy_label(spec.build_config({"model": model})) == label  # a resolved DictConfig too


def test_remedies_off_leave_every_committed_record_hash_unchanged():
    """Records written before the remedies existed hash as before: their configs lack the keys, which
    enter at their off values (config.HASH_NEUTRAL_DEFAULTS)."""
    records = sorted((REPO / "leaderboard" / "records").rglob("*.json"))
    assert records
    for path in records:
        entry = json.loads(path.read_text())
        config = {k: v for k, v in entry["config"].items() if k not in ("output", "executor")}
        assert spec.spec_hash(spec.build_config(config)) == entry["spec_hash"], path
        explicit = json.loads(json.dumps(config))
        for remedy in REMEDIES:
            explicit["model"].setdefault(remedy.key.split(".")[1], remedy.off)
        assert spec.spec_hash(spec.build_config(explicit)) == entry["spec_hash"], path


# ------------------------------------------------------------------------------------------------- spec load


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ({"residual_style": "pre"}, "model.residual_style: 'pre' (pre-activation residual skips) needs "
                                    "model.residual: true, got false"),
        ({"routing": "dynamic", "pose_norm_kind": "layer"}, "model.pose_norm_kind: 'layer' (LayerNorm of poses) "
                                                            "needs model.pose_norm: true, got null"),
        ({"routing": "em", "init": "length"}, "model.init: 'length' (length-preserving initialisation) needs a "
                                              "routing whose primary_activation is 'length'"),
        ({"residual_style": "sideways"}, "model.residual_style: expected one of post, pre"),
        ({"pose_norm_kind": "group"}, "model.pose_norm_kind: expected one of batch, layer"),
        ({"init": "xavier"}, "model.init: expected one of default, length"),
    ],
)
def test_bad_remedy_settings_fail_at_spec_load_naming_the_key(model, needle):
    with pytest.raises(SpecError, match="^" + needle.replace("(", r"\(").replace(")", r"\)")):
        spec.build_config({"model": model})


def test_validate_rejects_a_bad_remedy_with_one_line_and_exit_2(capsys):
    quickstart = str(REPO / "specs" / "quickstart.yaml")
    assert main(["validate", quickstart, "model.residual_style=pre"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.residual_style" in err[0] and "Traceback" not in err[0]
    assert main(["validate", quickstart, "model.residual=true", "model.residual_style=pre"]) == 0


# ------------------------------------------------------------------------------------------------- every routing


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("remedy", sorted(REMEDY_SETTINGS))
def test_every_remedy_works_with_every_routing(routing, remedy):
    torch.manual_seed(0)
    model = _jitter(_capsnet(routing, 4, **REMEDY_SETTINGS[remedy]))
    out, seen = _outputs(model, torch.randn(3, 1, 16, 16))
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    for name, caps in seen.items():
        assert ((caps.activation >= 0) & (caps.activation <= 1)).all(), name
        assert torch.isfinite(caps.pose).all(), name
    (out * torch.arange(1.0, 6.0)).sum().backward()  # not out.sum(): self-routing activations sum to 1
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    assert model.caps["conv1"].votes.weight.grad.abs().sum() > 0, "no gradient reaches the first stacked layer"


@pytest.mark.parametrize("routing", ROUTINGS)
def test_remedies_off_build_the_plain_model(routing):
    off = {r.key.split(".")[1]: r.off for r in REMEDIES}
    torch.manual_seed(0)
    plain = _capsnet(routing, 3)
    torch.manual_seed(0)
    explicit = _capsnet(routing, 3, **off)
    a, b = plain.state_dict(), explicit.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), explicit.eval()(x))


# ------------------------------------------------------------------------------------------------- pre-activation


def _skip(a, b):
    return a.pose + b.pose, a.activation + b.activation - a.activation * b.activation


@pytest.mark.parametrize("routing", ("em", "self"))  # both put a BatchNorm on poses by reference
def test_pre_activation_adds_the_unnormalised_stream_and_normalises_only_what_the_next_layer_receives(routing):
    torch.manual_seed(1)
    model = _jitter(_capsnet(routing, 5, residual=True, residual_style="pre")).eval()
    _, seen = _outputs(model, torch.randn(2, 1, 16, 16))
    raw = [seen[f"conv{k}"] for k in range(1, 6)]  # each layer's own routed output, not normalised
    s0 = raw[0]
    s2 = _skip(raw[2], s0)
    s4 = _skip(raw[4], type(raw[0])(*s2))
    class_input = seen["class_input"]
    expected_pose = model.caps["conv5"].normalise_pose(s4[0])
    torch.testing.assert_close(class_input.pose, expected_pose)
    torch.testing.assert_close(class_input.activation, s4[1])  # activations are never normalised
    assert not torch.allclose(class_input.pose, s4[0])  # the norm did act on what the class capsules got


def test_pre_activation_differs_from_post_only_where_the_stream_carries_an_earlier_skip():
    """Without a pose norm (dynamic routing), pre and post differ only in the skip source: the same at
    depth 3 (conv3 <- conv1 either way), different at depth 5 (conv5 <- stream = conv3 (+) conv1)."""
    x = torch.randn(2, 1, 16, 16)
    for depth, same in ((3, True), (5, False)):
        torch.manual_seed(2)
        post = _jitter(_capsnet("dynamic", depth, residual=True)).eval()
        pre = _capsnet("dynamic", depth, residual=True, residual_style="pre").eval()
        pre.load_state_dict(post.state_dict())
        with torch.no_grad():
            assert torch.allclose(post(x), pre(x), atol=1e-6) == same, depth


# ------------------------------------------------------------------------------------------------- LayerNorm


@pytest.mark.parametrize("routing", ("em", "dynamic"))
def test_layer_norm_gives_every_capsule_pose_zero_mean_and_unit_variance_without_batch_statistics(routing):
    torch.manual_seed(3)
    model = _capsnet(routing, 2, pose_norm=True, pose_norm_kind="layer")
    with torch.no_grad():  # poses well above the norm's eps; the norm's own affine stays at identity
        for layer in model.capsule_layers[1:]:
            layer.votes.weight.mul_(20)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for n, m in model.named_modules() if "pose_norm" in n)
    x = torch.randn(4, 1, 16, 16)
    _, train_seen = _outputs(model.train(), x)
    pose = train_seen["conv2"].pose  # [N, T, D, H, W], affine at its identity init
    torch.testing.assert_close(pose.mean(2), torch.zeros_like(pose.mean(2)), atol=1e-5, rtol=0)
    torch.testing.assert_close(pose.var(2, unbiased=False), torch.ones_like(pose.mean(2)), atol=1e-2, rtol=0)
    norm = model.caps["conv2"].pose_norm  # no batch statistics: one image's output ignores the others
    raw = torch.randn(4, 4, 4, 3, 3)
    torch.testing.assert_close(norm(raw)[:1], norm.eval()(raw[:1]))


# ------------------------------------------------------------------------------------------------- init


def _lengths(init: str, depth: int, iterations: int = 3) -> list[float]:
    """Mean capsule length (= activation) per layer of dynamic routing at init, long-cpu shapes (8x8 digits)."""
    torch.manual_seed(0)
    cfg = ModelConfig(routing="dynamic", backbone="sr_convnet", depth=depth, primary_types=16, iterations=iterations,
                      init=init)
    model = build_capsnet(cfg, num_classes=10, in_channels=1, image_size=(8, 8)).train()  # batch statistics
    with torch.no_grad():
        _, seen = _outputs(model, torch.randn(16, 1, 8, 8))
    return [float(seen[name].activation.mean()) for name in ("primary", *model.stacked, "class")]


def test_window_slots_and_gain():
    assert window_slots((1, 1), 3, 1, 1) == 1.0  # the long-cpu grid: 8 of 9 slots are padding
    assert window_slots((4, 4), 3, 1, 1) == 6.25  # corners 4, edges 6, inside 9
    assert window_slots((5, 5), 3, 1, 0) == 9.0
    # a child of the target length gives |s| = gain * sqrt(children) / parents * target: squashed, the target
    s2 = (length_gain(16, 16) * 4 / 16 * TARGET_LENGTH) ** 2
    assert s2 / (1 + s2) == pytest.approx(TARGET_LENGTH)


def test_default_init_lets_dynamic_routing_lengths_vanish_by_the_third_layer():
    lengths = _lengths("default", 6)
    assert lengths[0] > 0.9  # primary capsules: squashed BatchNorm'd poses
    assert lengths[1] < 0.1 and lengths[2] < 1e-3 and max(lengths[3:]) < 1e-6


def test_length_init_keeps_dynamic_routing_lengths_near_its_fixed_point_at_depth():
    lengths = _lengths("length", 10)
    assert all(0.55 < length < 0.95 for length in lengths[1:]), lengths
    one_iteration = _lengths("length", 10, iterations=1)  # the uniform first iteration the gain is derived for
    assert all(abs(length - TARGET_LENGTH) < 0.1 for length in one_iteration[2:-1]), one_iteration


def test_length_init_lets_the_gradient_reach_the_first_stacked_layer():
    norms = {}
    for init in ("default", "length"):
        torch.manual_seed(0)
        cfg = ModelConfig(routing="dynamic", backbone="sr_convnet", depth=8, primary_types=16, init=init)
        model = build_capsnet(cfg, num_classes=10, in_channels=1, image_size=(8, 8)).train()
        out = model(torch.randn(8, 1, 8, 8))
        (out * torch.arange(1.0, 11.0)).sum().backward()
        norms[init] = float(model.caps["conv1"].votes.weight.grad.norm())
    assert norms["default"] < 1e-12 < 1e-4 < norms["length"], norms


def test_length_init_refuses_a_hand_set_weight_std():
    from capsbench.errors import UserError

    cfg = ModelConfig(routing="dynamic", backbone="tiny", depth=1, init="length", options={"weight_std": 0.1})
    with pytest.raises(UserError, match="model.options.weight_std"):
        build_capsnet(cfg, num_classes=5, in_channels=1, image_size=(16, 16))


# ------------------------------------------------------------------------------------------------- the sweeps


def _by_arm(path: Path) -> dict[tuple[str, int], spec.RunSpec]:
    return {(run.point["extends"], run.config.model.depth): run for run in spec.load(path)}


def test_the_remedies_screening_covers_every_routing_and_remedy_and_reuses_the_long_screening_runs():
    runs = _by_arm(REPO / "specs" / "remedies" / "screening.yaml")
    assert {depth for _, depth in runs} == {10, 20} and {run.seed for run in runs.values()} == {0}
    labels: dict[str, set[str]] = {}
    for run in runs.values():
        assert run.config.protocol == "long-cpu" and run.config.train.batch_size == 32
        labels.setdefault(run.config.model.routing, set()).add(remedy_label(run.config))
        # EM and VB on their fused routing (their compiled kernels) past depth 10, as issue 16 asks (VB's kernel is
        # 1.7-1.8x cheaper than its reference path at depths 10-30, docs/remedies.md)
        expected_impl = {"em": "fused", "vb": "fused"}.get(run.config.model.routing, "auto")
        assert run.config.model.routing_impl == expected_impl, run.point
    common = {"none", "res", "res+skip=pre", "pose-norm+norm=layer", "res+skip=pre+pose-norm+norm=layer",
              "momentum=0.9"}
    skips = {"none", "res", "res+skip=pre+pose-norm+norm=layer"}  # the contributed routings: plain and two skips
    assert labels == {"em": common, "self": common, "vb": common | {"pose-norm"},
                      "dynamic": common | {"pose-norm", "init=length"}, "ida": skips, "efficient": skips}
    # the plain presets at depth 10 are the long screenings' runs (same hash, same sweep folder): reused
    long_screening = [*spec.load(REPO / "specs" / "long" / "screening.yaml"),
                      *spec.load(REPO / "specs" / "contrib" / "long_screening.yaml")]
    long_runs = {(r.config.model.routing, r.config.model.depth): r for r in long_screening
                 if remedy_label(r.config) == "none" and not r.config.model.routing_options}
    plain = [r for r in runs.values() if remedy_label(r.config) == "none" and r.config.model.depth == 10]
    assert len(plain) == 6 and all(r.config.name == "long_cpu" for r in plain)
    for run in plain:
        assert run.spec_hash == long_runs[(run.config.model.routing, 10)].spec_hash, run.config.model.routing


def _plain(run) -> bool:
    return remedy_label(run.config) == "none" and not run.config.model.routing_options


def test_the_remedies_confirmation_holds_three_seeds_to_depth_30():
    runs = list(spec.load(REPO / "specs" / "remedies" / "confirmation.yaml"))
    assert {r.seed for r in runs} == {0, 1, 2} and {r.config.model.depth for r in runs} == {10, 20, 30}
    assert {r.config.model.routing for r in runs} == {"em", "vb", "self", "dynamic", "ida"}  # efficient: no arm
    # every arm to confirm sits beside its routing's plain preset, and its seed-0 runs at depths 10 and 20 are the
    # screening's (same hash, same folder): reused, not run again
    with_arms = {r.config.model.routing for r in runs if not _plain(r)}
    assert with_arms <= {r.config.model.routing for r in runs if _plain(r)}
    screening = {r.spec_hash for r in spec.load(REPO / "specs" / "remedies" / "screening.yaml")}
    for run in runs:
        if run.seed == 0 and run.config.model.depth in (10, 20):
            assert run.spec_hash in screening, run.point


def test_arms_without_a_symptom_to_cure_go_to_depth_30_on_one_seed():
    """Amendment 5: self's and VB's plain presets had no symptom at 10 and 20; their arms go to 30 on seed 0, every
    one a screening arm (same settings but the depth), while their plain presets get three seeds in the confirmation."""
    runs = list(spec.load(REPO / "specs" / "remedies" / "confirmation_no_symptom.yaml"))
    assert {r.config.model.depth for r in runs} == {30} and {r.seed for r in runs} == {0}
    assert {r.config.model.routing for r in runs} == {"self", "vb"} and not any(_plain(r) for r in runs)
    screening = {(r.config.model.routing, remedy_label(r.config)): r
                 for r in spec.load(REPO / "specs" / "remedies" / "screening.yaml") if r.config.model.depth == 20}
    assert len(runs) == len({k for k in screening if k[0] in ("self", "vb") and k[1] != "none"})
    for run in runs:
        twin = screening[(run.config.model.routing, remedy_label(run.config))]
        mine, theirs = (OmegaConf.to_container(c, resolve=True) for c in (run.config, twin.config))
        mine["model"]["depth"] = 20
        assert mine == theirs, run.point
    confirmation = list(spec.load(REPO / "specs" / "remedies" / "confirmation.yaml"))
    for routing in ("self", "vb"):
        plain = {(r.config.model.depth, r.seed) for r in confirmation if r.config.model.routing == routing}
        assert plain == {(d, s) for d in (10, 20, 30) for s in range(3)}
        assert all(_plain(r) for r in confirmation if r.config.model.routing == routing)


def test_one_seed_cures_get_their_seeds_beside_the_plain_preset():
    """Amendment 6: a cure on seed 0 at a depth its arm is not confirmed at gets seeds 1 and 2 there, beside its
    routing's plain preset at that depth; seed 0 is the screening's run (same hash, same folder), not a new one."""
    runs = list(spec.load(REPO / "specs" / "remedies" / "confirmation_cures.yaml"))
    screening = {r.spec_hash: r for r in spec.load(REPO / "specs" / "remedies" / "screening.yaml")}
    confirmed = {(r.config.model.routing, remedy_label(r.config), r.config.model.depth)
                 for r in spec.load(REPO / "specs" / "remedies" / "confirmation.yaml")}
    arms = {(r.config.model.routing, remedy_label(r.config), r.config.model.depth) for r in runs if not _plain(r)}
    assert arms == {("efficient", "res", 10)} and not arms & confirmed
    for routing, _, depth in arms:
        points = {(r.seed, _plain(r)) for r in runs
                  if r.config.model.routing == routing and r.config.model.depth == depth}
        assert points == {(s, p) for s in range(3) for p in (True, False)}
    for run in runs:
        if run.seed == 0:
            assert run.spec_hash in screening, run.point


def test_the_contributed_reference_runs_are_the_confirmations_plain_presets_at_shallow_depths():
    """Amendment 4: A_ref of a contributed routing needs its plain preset at depths 1, 3, 6 (10 is confirmed)."""
    reference = list(spec.load(REPO / "specs" / "remedies" / "contrib_reference.yaml"))
    screening = {r.config.model.routing: r for r in spec.load(REPO / "specs" / "remedies" / "screening.yaml")
                 if _plain(r) and r.config.model.depth == 10}
    assert len(reference) == 2 * 3 * 3 and all(_plain(r) for r in reference)
    assert {r.config.model.routing for r in reference} == {"ida", "efficient"}
    for run in reference:
        assert run.config.model.depth in (1, 3, 6) and run.config.name == "long_cpu"
        twin = screening[run.config.model.routing]  # the plain preset at depth 10, seed 0: all else equal
        mine, theirs = (OmegaConf.to_container(c, resolve=True) for c in (run.config, twin.config))
        mine["model"]["depth"], mine["seed"] = 10, 0
        assert mine == theirs, run.point


def test_length_init_with_one_iteration_passes_the_gradient_back_undiminished():
    """The gain is derived for the uniform first iteration: there the backward pass neither vanishes nor explodes
    (the agreement updates of later iterations change that: docs/remedies.md, benchmarks/init_lengths.py)."""
    from capsbench.metrics.grad_norms import input_gradient_ratio

    for depth in (8, 20):
        torch.manual_seed(0)
        cfg = ModelConfig(routing="dynamic", backbone="sr_convnet", depth=depth, primary_types=16, iterations=1,
                          init="length")
        model = build_capsnet(cfg, num_classes=10, in_channels=1, image_size=(8, 8)).train()
        assert 0.3 < input_gradient_ratio(model, torch.randn(8, 1, 8, 8)) < 3, depth
