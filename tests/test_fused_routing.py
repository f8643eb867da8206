"""The fused routing path against the reference path (the oracle), and the ``routing_impl`` switch.

Equality: every routing with a fused path, through the real layers (ConvCaps with
overlapping and strided windows, ClassCaps with per-position and shared weights), over
options, iterations, block sizes (one window per block, blocks with a remainder, one block)
and dtypes: poses, activations, coefficients and the gradients of child poses, child
activations, vote weights and betas agree to float64 rounding (fp64) and to 1e-5 / 1e-4
relative (fp32 outputs / gradients).
"""

from __future__ import annotations

import pytest
import torch

from capsbench.capsules.layers import ClassCaps, ConvCaps
from capsbench.capsules.routing import fused
from capsbench.capsules.types import Capsules
from capsbench.errors import UserError
from capsbench.spec import load as load_spec

LAYERS = {
    "conv_k3_s1_p1": lambda **kw: ConvCaps(3, 4, 3, 1, 1, **kw),
    "conv_k3_s2_p0": lambda **kw: ConvCaps(3, 4, 3, 2, 0, **kw),
    "class_shared": lambda **kw: ClassCaps(3, 5, in_hw=(4, 4), mode="shared", coordinate_scale=2.0, **kw),
    "class_conv": lambda **kw: ClassCaps(3, 5, in_hw=(4, 4), mode="conv", **kw),
}
TOLERANCE = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-4)}  # relative: outputs, gradients


def pair(layer, routing_options, dtype, iterations=3, routing="em", **kw):
    """The same layer twice, on the reference and on the fused path, with learned-looking parameters."""
    made = []
    for impl in ("reference", "fused"):
        torch.manual_seed(0)
        made.append(
            LAYERS[layer](routing=routing, iterations=iterations, routing_impl=impl, **kw, **routing_options).to(dtype)
        )
    ref, fus = made
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))
    fus.load_state_dict(ref.state_dict())
    return ref, fus


def inputs(dtype, n=2, types=3, hw=(4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    pose = torch.randn(n, types, 16, *hw, generator=g, dtype=dtype)
    act = torch.rand(n, types, *hw, generator=g, dtype=dtype)
    return pose, act


def run(layer, pose, act, seed=1):
    """Outputs, coefficients and every gradient of one forward + backward (a random linear loss)."""
    pose, act = pose.clone().requires_grad_(), act.clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    out = layer(Capsules(pose, act))
    g = torch.Generator().manual_seed(seed)
    w_pose = torch.randn(out.pose.shape, generator=g, dtype=out.pose.dtype)
    w_act = torch.randn(out.activation.shape, generator=g, dtype=out.pose.dtype)
    ((out.pose * w_pose).sum() + (out.activation * w_act).sum()).backward()
    grads = {f"grad {name}": p.grad for name, p in layer.named_parameters() if p.grad is not None}
    values = {"pose": out.pose, "activation": out.activation, "coefficients": layer.last_coefficients}
    return values, {"grad child pose": pose.grad, "grad child activation": act.grad, **grads}


def assert_relative(a, b, rtol, what, floor=1e-6):
    """Max error relative to the largest entry of ``b`` (at least ``floor``)."""
    scale = max(b.abs().max().item(), floor)
    err = (a - b).abs().max().item() / scale
    assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:.0e}"


def use_blocks(monkeypatch, windows: int) -> None:
    """Blocks of at most ``windows`` windows (for the 144-child, 4-parent layers here, in fp64)."""
    monkeypatch.setattr(fused, "BLOCK_BYTES", windows * 144 * 4 * 16 * 8)


def assert_paths_agree(ref, fus, dtype):
    pose, act = inputs(dtype)
    (a, ga), (b, gb) = run(ref, pose, act), run(fus, pose, act)
    assert ref.last_impl == "reference" and fus.last_impl == "fused"
    out_tol, grad_tol = TOLERANCE[dtype]
    for key in ("pose", "activation"):
        assert_relative(b[key], a[key], out_tol, key)
    # the coefficients are a diagnostic (telemetry), normalised in log space over receiving parents:
    # fp32 rounding there reaches 1.0e-5, so they are held to the gradient tolerance
    assert_relative(b["coefficients"], a["coefficients"], grad_tol, "coefficients")
    assert set(ga) == set(gb) and any("beta_u" in k for k in ga) and any("votes.weight" in k for k in ga)
    # a gradient that is zero in exact maths (VB's beta_u: the activation BatchNorm removes any
    # per-type shift) is rounding noise on both paths: scaled by the largest gradient of the layer
    largest = max(g.abs().max().item() for g in ga.values())
    for key in ga:
        assert_relative(gb[key], ga[key], grad_tol, key, floor=1e-3 * largest)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize(
    "options,iterations",
    [({}, 3), ({}, 1), ({"cost": "mean"}, 2), ({"cost": "standardise", "final_lambda": 5.0}, 3),
     ({"normalise": "receiving_parents"}, 3), ({"normalise": "receiving_parents", "cost": "mean"}, 1)],
    ids=["sum-3", "sum-1", "mean-2", "standardise-3", "receiving-3", "receiving-mean-1"],
)  # fmt: skip
def test_fused_em_equals_the_reference(layer, options, iterations, dtype, monkeypatch):
    use_blocks(monkeypatch, 5)  # several blocks, the last one short
    assert_paths_agree(*pair(layer, options, dtype, iterations), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize(
    "options,iterations",
    [({}, 3), ({}, 1), ({"normalise": "parents", "log_det": "wishart"}, 2), ({"activation_bn": False}, 3)],
    ids=["default-3", "default-1", "parents-wishart-2", "no-activation-bn-3"],
)
def test_fused_vb_equals_the_reference(layer, options, iterations, dtype, monkeypatch):
    use_blocks(monkeypatch, 5)
    if dtype == torch.float32:
        # VB's BatchNorms over 2-8 values per type (these tiny layers) amplify fp32 rounding past any
        # fixed tolerance on both paths alike; fp32 compares the routing itself, fp64 covers the BNs
        options = {**options, "activation_bn": False, "pose_bn": False}
    assert_paths_agree(*pair(layer, options, dtype, iterations, routing="vb"), dtype)


@pytest.mark.parametrize("windows", [1, 10_000], ids=["one window per block", "one block"])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_fused_em_equals_the_reference_whatever_the_block_size(layer, windows, monkeypatch):
    use_blocks(monkeypatch, windows)
    assert_paths_agree(*pair(layer, {}, torch.float64), torch.float64)


def test_fused_em_with_linear_votes_equals_the_reference():
    ref, fus = pair("conv_k3_s1_p1", {}, torch.float64, pose_dim=16, vote_transform="linear")
    pose, act = inputs(torch.float64)
    (a, ga), (b, gb) = run(ref, pose, act), run(fus, pose, act)
    for key in a:
        assert_relative(b[key], a[key], 1e-10, key)
    for key in ga:
        assert_relative(gb[key], ga[key], 1e-10, key)


@pytest.mark.parametrize("routing", ["em", "vb"])
@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_a_child_with_zero_activation_has_no_influence_bit_for_bit(impl, routing):
    """Zero-activation invariants, bit-exact on both paths: a silent child's pose changes nothing."""
    torch.manual_seed(0)
    layer = ConvCaps(3, 4, 3, 1, 1, routing=routing, routing_impl=impl).eval()  # eval: BN statistics fixed
    pose, act = inputs(torch.float32)
    act[:, 1] = 0.0  # every child of type 1 is silent
    moved = pose.clone()
    moved[:, 1] = 1e3 * torch.randn_like(moved[:, 1])
    a, b = layer(Capsules(pose, act)), layer(Capsules(moved, act))
    assert torch.equal(a.pose, b.pose) and torch.equal(a.activation, b.activation)


@pytest.mark.parametrize("routing", ["em", "vb"])
@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_all_silent_children_give_the_same_finite_outputs_on_both_paths(impl, routing):
    torch.manual_seed(0)
    layer = ConvCaps(3, 4, 3, 1, 1, routing=routing, routing_impl=impl)
    pose, act = inputs(torch.float32)
    out = layer(Capsules(pose.requires_grad_(), torch.zeros_like(act)))
    (out.pose.sum() + out.activation.sum()).backward()
    assert torch.isfinite(out.pose).all() and torch.isfinite(pose.grad).all()
    assert (pose.grad == 0).all()  # no child counts, so no child pose moves anything


@pytest.mark.parametrize("routing", ["em", "vb"])
def test_fused_path_stores_no_votes_sized_tensor(routing):
    """What the fused layer keeps for backward is the child poses (and, VB, the coefficients of each
    iteration), not the J-times-larger votes.

    On the paper's window (3x3x16 children -> 16 parent types, 3 iterations): the compiled CPU EM kernel
    also keeps, per window, the coefficients of iterations 2 and 3 ((T-1)/D of the votes) and the
    per-parent statistics, so that its backward recomputes only the votes: 1/5 of the votes in all.
    """
    torch.manual_seed(0)
    layer = ConvCaps(16, 16, 3, 1, 1, routing=routing, routing_impl="fused", iterations=3)
    pose, act = inputs(torch.float32, types=16, hw=(4, 4))
    pose.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        layer(Capsules(pose, act))
    votes = 2 * 16 * (16 * 9) * 16 * 16  # N * L * I * J * D
    assert saved and max(saved) < votes / 4


# --------------------------------------------------------------------------------------------- the switch


def test_fused_on_a_configuration_without_one_is_a_user_error():
    with pytest.raises(UserError, match="routing_impl=fused.*no fused implementation"):
        ConvCaps(3, 4, 3, 1, 1, routing="self", routing_impl="fused")
    with pytest.raises(UserError, match="routing_impl must be one of auto, reference, fused"):
        ConvCaps(3, 4, 3, 1, 1, routing="em", routing_impl="fast")


def test_auto_takes_fused_only_where_it_exists_and_is_measured_faster(monkeypatch):
    pose, act = inputs(torch.float32)
    monkeypatch.setattr(fused, "MEASURED_FASTER", {})
    em = ConvCaps(3, 4, 3, 1, 1, routing="em")
    em(Capsules(pose, act))
    assert em.last_impl == "reference"  # not measured faster: the reference path
    monkeypatch.setattr(fused, "MEASURED_FASTER", {("em", "cpu"): True})
    em(Capsules(pose, act))
    assert em.last_impl == "fused"
    vb = ConvCaps(3, 4, 3, 1, 1, routing="vb")
    vb(Capsules(pose, act))
    assert vb.last_impl == "reference"  # has a fused path, not measured faster
    plain = ConvCaps(3, 4, 3, 1, 1, routing="self")
    plain(Capsules(pose, act))
    assert plain.last_impl == "reference"  # a routing without forward_lazy


def test_routing_impl_is_validated_at_load_and_not_in_the_spec_hash(tmp_path):
    """Decision: both paths compute the same maths, so the spec hash ignores routing_impl (like the
    device); the run record states the path each layer ran (environment.routing_impl)."""
    spec = tmp_path / "s.yaml"
    spec.write_text("model: {routing: em}\n")
    hashes = {load_spec(spec, [f"model.routing_impl={impl}"])[0].spec_hash for impl in ("auto", "reference", "fused")}
    assert len(hashes) == 1
    with pytest.raises(UserError, match="model.routing_impl"):
        load_spec(spec, ["model.routing_impl=fast"])


def test_the_run_record_states_the_path_each_layer_ran():
    from capsbench.config import ModelConfig
    from capsbench.models.capsnet import build_capsnet
    from capsbench.train.runner import routing_implementations

    model = build_capsnet(ModelConfig(routing="em", depth=1, backbone="tiny", routing_impl="fused"), 10, 1, 8)
    model(torch.randn(2, 1, 8, 8))
    assert routing_implementations(model) == {"conv1": "fused", "class": "fused"}


@pytest.mark.parametrize("impl,kernel", [("fused", "1"), ("fused", "0"), ("reference", "1")])
def test_the_run_record_states_the_code_each_layer_ran(impl, kernel, monkeypatch):
    """``routing_impl`` "fused" is served by the blockwise PyTorch code or by a compiled kernel: the record's
    ``routing_backend`` tells them apart ("torch", or "c-" and the instruction set of the CPU EM kernel)."""
    from capsbench.capsules.routing.native import cpu_em
    from capsbench.config import ModelConfig
    from capsbench.models.capsnet import build_capsnet
    from capsbench.train.runner import routing_backends

    monkeypatch.setenv(cpu_em.SWITCH, kernel)
    model = build_capsnet(ModelConfig(routing="em", depth=1, backbone="tiny", routing_impl=impl), 10, 1, 8)
    model(torch.randn(2, 1, 8, 8))
    compiled = impl == "fused" and kernel == "1" and cpu_em.available()
    expected = cpu_em.backend(torch.float32) if compiled else "torch"
    assert routing_backends(model) == {"conv1": expected, "class": expected}
    if compiled:
        assert expected.startswith("c-") and expected != "c-"


def test_checkpointing_does_not_wrap_the_fused_path_and_changes_nothing():
    """The fused path recomputes by itself: with checkpointing on it runs once, with the same gradients."""
    _, fus = pair("conv_k3_s1_p1", {}, torch.float64, checkpointing=True)
    _, plain = pair("conv_k3_s1_p1", {}, torch.float64)
    pose, act = inputs(torch.float64)
    (_, ga), (_, gb) = run(plain, pose, act), run(fus, pose, act)
    for key in ga:
        assert torch.equal(ga[key], gb[key]), key
    calls = []
    original = fus._checkpointed_route
    fus._checkpointed_route = lambda *args: calls.append(1) or original(*args)
    run(fus, pose, act)
    assert not calls


def test_fused_path_under_bf16_autocast_matches_the_reference():
    ref, fus = pair("conv_k3_s1_p1", {}, torch.float32)
    pose, act = inputs(torch.float32)
    outs = []
    for layer in (ref, fus):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(Capsules(pose.bfloat16(), act.bfloat16()))
        assert out.pose.dtype == torch.bfloat16
        outs.append(out)
    torch.testing.assert_close(outs[1].pose, outs[0].pose)
    torch.testing.assert_close(outs[1].activation, outs[0].activation)


@pytest.mark.parametrize("routing", ["em", "vb"])
def test_fused_backward_is_deterministic_on_the_cpu(routing):
    """No atomics, a fixed block order: two identical steps give bit-identical gradients."""
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        layer = ConvCaps(3, 4, 3, 1, 1, routing=routing, routing_impl="fused")
        results.append(run(layer, *inputs(torch.float32))[1])
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


@pytest.mark.slow
def test_a_fused_run_records_its_path_through_the_command_line(tmp_path):
    import json

    from test_cli import REPO, capsbench

    result = capsbench(
        "run", str(REPO / "specs" / "quickstart.yaml"), "model.routing=em", "model.routing_impl=fused",
        "sweep.model.depth=[1]", "train.epochs=1", "data.subset=200", "--out", str(tmp_path), "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (record_path,) = tmp_path.rglob("record.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "ok"
    assert record["environment"]["routing_impl"] == {"conv1": "fused", "class": "fused"}
    assert set(record["environment"]["routing_backend"]) == {"conv1", "class"}
    assert record["config"]["model"]["routing_impl"] == "fused"
