"""Reversible momentum residual blocks (``model.momentum_residual``, MoCapsNet; capsbench/models/momentum.py).

The memory-saving backward (``MomentumStack``: the last state only, inputs rebuilt block by block)
against the same maths through plain autograd (``reversible=False``), its reconstruction error
with depth, BatchNorm statistics, what it saves, the spec keys, and a short learning run.
"""

from __future__ import annotations

import pytest
import torch
from test_cli import REPO
from torch import nn

from capsbench import spec
from capsbench.config import ModelConfig
from capsbench.errors import SpecError
from capsbench.models import capsnet
from capsbench.models.capsnet import build_capsnet
from capsbench.models.momentum import _logit, momentum_stack, rebuild, trajectory

ROUTINGS = ("em", "vb", "self", "dynamic", "uniform")
QUICKSTART = REPO / "specs" / "quickstart.yaml"
GAMMA = 0.9


def _model(routing: str, depth: int, gamma: float | None = GAMMA, types: int = 4, pose_dim: int = 4, **kw):
    torch.manual_seed(depth)
    cfg = ModelConfig(
        routing=routing, backbone="tiny", depth=depth, capsule_types=types, primary_types=types,
        pose_dim=pose_dim, iterations=2, momentum_residual=gamma, **kw,
    )  # fmt: skip
    model = build_capsnet(cfg, num_classes=5, in_channels=1, image_size=(8, 8))
    with torch.no_grad():  # off the initial values: self routing starts with zero routing weights (no signal)
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _step(model, x, reversible: bool, monkeypatch):
    """One forward and backward; -> output, gradients by name, buffers by name (after the step)."""
    monkeypatch.setattr(capsnet, "momentum_stack", lambda *a: momentum_stack(*a, reversible=reversible))
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out * torch.arange(1.0, 6.0, dtype=out.dtype)).sum().backward()  # not out.sum(): self's classes sum to 1
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads, {n: b.detach().clone() for n, b in model.named_buffers()}


def _compare(model, x, monkeypatch):
    """(reversible step, plain-autograd step) from the same weights and buffers."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reversible = _step(model, x, True, monkeypatch)
    model.load_state_dict(state)
    return reversible, _step(model, x, False, monkeypatch)


def _worst(got: dict, want: dict) -> float:
    """Largest gradient difference relative to the largest gradient of the whole model (the group scale:
    gradients that vanish in exact arithmetic, e.g. VB's beta under its BatchNorm, compare as rounding)."""
    assert got.keys() == want.keys()
    scale = max(float(g.abs().max()) for g in want.values())
    return max(float((got[n] - want[n]).abs().max()) for n in want) / scale


@pytest.mark.parametrize("routing", ROUTINGS)
def test_reversible_backward_equals_plain_autograd_in_float64(routing, monkeypatch):
    model = _model(routing, depth=5).double().train()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    (out, grads, buffers), (out_ref, grads_ref, buffers_ref) = _compare(model, x, monkeypatch)
    assert torch.equal(out, out_ref)  # one forward, the same maths
    blocks = [f"caps.{name}." for name in model.momentum_blocks]
    assert any(n.startswith(tuple(blocks)) for n in grads)  # the blocks' weights get gradients
    assert _worst(grads, grads_ref) < 1e-10
    # BatchNorm statistics (SR's pose BatchNorm, VB's) move once per step, not again in the recomputation
    for name, value in buffers_ref.items():
        torch.testing.assert_close(buffers[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("routing", ["self", "em"])
def test_reversible_backward_in_float32_within_stated_tolerance(routing, monkeypatch):
    """float32 at depth 10 (9 blocks) against float64 plain autograd: within 1e-3 of the largest gradient."""
    model = _model(routing, depth=10).double().train()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _, want, _ = _step(model, x, False, monkeypatch)
    model.load_state_dict(state)
    _, got, _ = _step(model.float(), x.float(), True, monkeypatch)
    assert _worst({n: g.double() for n, g in got.items()}, want) < 1e-3


def _reconstruction_error(routing: str, blocks: int) -> float:
    """Largest error of the rebuilt block inputs in float32, relative to each state's largest entry."""
    model = _model(routing, depth=blocks + 1, types=8, pose_dim=16)
    layers = [model.caps[n] for n in model.momentum_blocks]
    with torch.no_grad():
        caps = model.caps["conv1"](model.caps["primary"](model.backbone(torch.randn(4, 1, 8, 8))))
        forward = trajectory(layers, (caps.pose, _logit(caps.activation)), GAMMA)
        rebuilt = rebuild(layers, *forward[-1], GAMMA)
    return max(
        float((a - b).abs().max() / b.abs().max())
        for got, (want, _) in zip(rebuilt, reversed(forward[:-1]), strict=True)
        for a, b in zip(got, want, strict=True)
    )


def test_reconstruction_error_grows_with_depth_and_stays_small():
    """Rebuilding v divides by gamma once per block: rounding grows geometrically with depth.

    Measured (float32, self routing, 8 types of 4x4 poses, 8x8 grid): 2.0e-6, 1.6e-5, 7.2e-5 at
    10, 20, 30 blocks (about 6x per 10 blocks, against gamma**-10 = 2.9x: f amplifies too); EM
    4.6e-6, 9.6e-5, 1.3e-3 (weights jittered by 0.1 instead of 0.3).
    """
    errors = [_reconstruction_error("self", blocks) for blocks in (10, 20, 30)]
    print("float32 reconstruction error at 10, 20, 30 blocks:", errors)
    assert errors[0] < errors[2] < 1e-3
    assert errors[0] > 0  # the test measures float32 rounding, not an exact identity


def test_saved_memory_does_not_grow_with_depth(monkeypatch):
    """What autograd keeps for the backward: constant in depth when reversible, growing when not."""

    def saved_bytes(depth: int, reversible: bool) -> int:
        model = _model("self", depth).train()
        monkeypatch.setattr(capsnet, "momentum_stack", lambda *a: momentum_stack(*a, reversible=reversible))
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randn(2, 1, 8, 8))
        return total

    assert saved_bytes(3, True) == saved_bytes(8, True)
    assert saved_bytes(8, False) > saved_bytes(3, False) > saved_bytes(3, True)


def test_telemetry_hooks_see_each_block_once_per_step():
    model = _model("self", depth=4).train()
    seen = []
    for name in model.stacked:
        model.caps[name].register_forward_hook(lambda m, a, o, n=name: seen.append(n))
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert seen == list(model.stacked)  # the recomputation in the backward does not call hooks again


@pytest.mark.parametrize("routing", ["self", "dynamic"])
def test_off_and_at_depth_one_it_is_the_plain_stack(routing):
    x = torch.randn(2, 1, 8, 8)
    for depth, differs in ((1, False), (4, True)):
        plain = _model(routing, depth, gamma=None).eval()
        mo = _model(routing, depth).eval()
        mo.load_state_dict(plain.state_dict())  # same weights: only the blocks differ
        assert mo.momentum_blocks == plain.stacked[1:] and plain.momentum_blocks == []
        with torch.no_grad():
            assert torch.allclose(plain(x), mo(x), atol=1e-6) != differs, f"{routing} depth {depth}"


def test_block_rule_by_hand():
    """Poses add their velocity; the activation logit relaxes towards the routed activation's logit."""
    layer = _model("self", 2).caps["conv2"].eval()
    pose, act = torch.randn(1, 4, 4, 8, 8), torch.rand(1, 4, 8, 8)
    with torch.no_grad():
        routed = layer(capsnet.Capsules(pose, act))
        out = momentum_stack([layer], capsnet.Capsules(pose, act), 0.25, reversible=False)
    torch.testing.assert_close(out.pose, pose + 0.75 * routed.pose)
    logit = _logit(act)
    torch.testing.assert_close(out.activation, torch.sigmoid(logit + 0.75 * (_logit(routed.activation) - logit)))


def test_stochastic_blocks_are_refused():
    layer = _model("self", 2).caps["conv2"].train()
    layer.dropout = nn.Dropout(0.1)
    caps = capsnet.Capsules(torch.randn(1, 4, 4, 8, 8), torch.rand(1, 4, 8, 8))
    with pytest.raises(ValueError, match="conv2.dropout is dropout"):
        momentum_stack([layer], caps, GAMMA)


def test_checkpointing_is_off_inside_blocks_only():
    model = _model("self", 3, checkpointing=True)
    assert [model.caps[n].checkpointing for n in ("conv1", "conv2", "conv3", "class")] == [True, False, False, True]


# ------------------------------------------------------------------------------------------------
# The spec key


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model.momentum_residual=1.0"], "model.momentum_residual: expected a number > 0 and < 1 or null, got 1.0"),
        (["model.momentum_residual=0"], "expected a number > 0 and < 1 or null, got 0"),
        (["model.momentum_residual=0.9", "model.residual=true"], "cannot be combined with model.residual=true"),
        (["model.momentum_residual=0.9", "model.arch=timm_resnet"], "only capsule networks"),
    ],
)
def test_bad_values_are_one_line_spec_errors(overrides, needle):
    with pytest.raises(SpecError, match=r"^[^\n]*$") as error:
        spec.load(QUICKSTART, ["model.depth=3", *overrides])
    assert needle in str(error.value)


def test_hash_neutral_when_off():
    (off,) = spec.load(QUICKSTART, ["model.depth=3"])
    (null,) = spec.load(QUICKSTART, ["model.depth=3", "model.momentum_residual=null"])
    (on,) = spec.load(QUICKSTART, ["model.depth=3", "model.momentum_residual=0.9"])
    assert off.config.model.momentum_residual is None
    assert off.spec_hash == null.spec_hash != on.spec_hash
    # committed records, written before the key existed, keep their hash
    assert "momentum_residual" not in spec.canonical(off.config)["model"]
    assert spec.canonical(on.config)["model"]["momentum_residual"] == 0.9


@pytest.mark.slow
def test_learns_digits_with_momentum_blocks(tmp_path):
    """Self routing with 4 stacked layers (3 momentum blocks) learns digits, as test_learning's runs do."""
    from test_learning import PRECISE_BN, THRESHOLD

    from capsbench.train.runner import run

    (run_spec,) = spec.load(QUICKSTART, [
        "model.routing=self", "model.depth=4", "model.momentum_residual=0.9", "train.epochs=3",
        "output.quiet=true", f"train.precise_bn={PRECISE_BN}",
    ])  # fmt: skip
    record = run(run_spec.config, tmp_path / "run", spec_hash=run_spec.spec_hash, progress=False)
    print("momentum self depth 4 test accuracy", record["metrics"]["test_accuracy"])
    assert record["status"] == "ok", record["error"]
    assert record["metrics"]["test_accuracy"] > THRESHOLD, record["metrics"]
