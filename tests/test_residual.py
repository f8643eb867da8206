"""Residual capsule networks (``model.residual``): skips of distance 2, for every routing, and their sweeps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from capsbench import spec
from capsbench.config import ModelConfig
from capsbench.models.capsnet import build_capsnet

REPO = Path(__file__).resolve().parent.parent
ROUTINGS = ("em", "vb", "self", "dynamic")
DATASETS = ["mnist", "fashion_mnist", "cifar10", "smallnorb", "imagewoof"]


def _capsnet(routing: str, depth: int, residual: bool = True):
    cfg = ModelConfig(
        routing=routing, backbone="tiny", depth=depth, capsule_types=4, primary_types=4, pose_dim=4,
        iterations=2, residual=residual,
    )  # fmt: skip
    return build_capsnet(cfg, num_classes=5, in_channels=1, image_size=(16, 16))


def _jitter(model):
    """Move every weight off its initial value: self-routing starts with zero routing weights, so at
    init its class activations are exactly 1/classes whatever the input (no signal, no gradient)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _trace(model, x):
    """Run ``model`` on ``x``; return (what each stacked layer passes on, what it computed itself).

    ``passed[k]`` is the input of the layer after stacked layer ``k`` (``passed[0]``: the input
    of ``conv1``), i.e. the output after any skip; ``raw[k]`` is layer ``k``'s own routed output
    (forward hooks see it before the skip is added). ``raw[0] = passed[0]``.
    """
    names = list(model.stacked)
    inputs, raw, handles = {}, {}, []
    for name, layer in model.caps.items():
        if name in names or layer.kind == "class":
            handles.append(layer.register_forward_pre_hook(lambda m, a, n=name: inputs.__setitem__(n, a[0])))
        if name in names:
            handles.append(layer.register_forward_hook(lambda m, a, o, n=name: raw.__setitem__(n, o)))
    out = model(x)
    for h in handles:
        h.remove()
    after = [*names[1:], "class"]
    passed = [inputs[names[0]], *(inputs[n] for n in after)] if names else []
    return out, passed, [passed[0], *(raw[n] for n in names)] if names else []


def _skips(passed, raw) -> dict[int, int]:
    """{layer k: the layer its skip came from}; raises when a skip comes from anywhere but two back."""
    found = {}
    for k in range(1, len(passed)):
        delta = passed[k].pose - raw[k].pose
        if torch.allclose(delta, torch.zeros_like(delta), atol=1e-6):
            assert torch.equal(passed[k].activation, raw[k].activation), f"conv{k}: activation changed without a skip"
            continue
        sources = [j for j in range(k) for c in (passed[j], raw[j]) if torch.allclose(delta, c.pose, atol=1e-5)]
        assert sources and set(sources) == {k - 2}, (
            f"conv{k}: skip comes from layers {sorted(set(sources))}, not {k - 2}"
        )
        a, b, src = passed[k].activation, raw[k].activation, passed[k - 2].activation
        # any documented combination stays in [0, 1], is at least either input and at most their sum
        assert ((a >= torch.maximum(b, src) - 1e-6) & (a <= torch.clamp(b + src, max=1.0) + 1e-6)).all()
        found[k] = k - 2
    return found


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_residual_capsnet_skips_two_layers_back_and_trains(routing, depth):
    torch.manual_seed(depth)
    model = _jitter(_capsnet(routing, depth))
    x = torch.randn(3, 1, 16, 16)
    out, passed, raw = _trace(model, x)
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    skips = _skips(passed, raw)
    if depth >= 3:
        assert skips, f"{routing} depth {depth}: no skip was used"
    for p in passed:
        assert ((p.activation >= 0) & (p.activation <= 1)).all()
    (out * torch.arange(1.0, 6.0)).sum().backward()  # not out.sum(): self-routing activations sum to 1
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    for name in ("conv1", *(["conv3"] if depth >= 3 else [])):
        assert model.caps[name].votes.weight.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("routing", ROUTINGS)
def test_without_residual_nothing_is_added(routing):
    model = _capsnet(routing, 4, residual=False)
    _, passed, raw = _trace(model, torch.randn(2, 1, 16, 16))
    assert _skips(passed, raw) == {}


@pytest.mark.parametrize("routing", ROUTINGS)
def test_skips_change_the_output_only_when_there_is_room_for_them(routing):
    x = torch.randn(2, 1, 16, 16)
    for depth, differs in ((1, False), (4, True)):
        torch.manual_seed(0)
        plain = _jitter(_capsnet(routing, depth, residual=False)).eval()
        res = _capsnet(routing, depth, residual=True).eval()
        res.load_state_dict(plain.state_dict())  # same weights: only the skips differ
        with torch.no_grad():
            same = torch.allclose(plain(x), res(x), atol=1e-6)
        assert same != differs, f"{routing} depth {depth}"


# ------------------------------------------------------------------------------------------------
# The sweeps


@pytest.mark.parametrize("routing", ROUTINGS)
def test_residual_sweep_specs(routing):
    path = REPO / f"specs/residual_{routing}_depth_sweep.yaml"
    assert spec.resolve_file(path)["sweep"] == {
        "data.name": DATASETS,
        "model.depth": list(range(1, 11)),
        "seed": [0, 1, 2],
    }
    cfgs = [r.config for r in spec.load(path, ["data.name=mnist", "seed=0"])]  # one data set: fast
    assert all(c.model.arch == "capsnet" and c.model.routing == routing and c.model.residual for c in cfgs)
    assert [c.model.depth for c in cfgs] == list(range(1, 11))
    # the residual reference's protocol (REFERENCES.md): Adam 1e-4, batch 128, 30 epochs, 2 iterations
    protocol = {(c.train.optimizer.name, c.train.optimizer.lr, c.train.batch_size, c.train.epochs, c.model.iterations)
                for c in cfgs}  # fmt: skip
    assert protocol == {("adam", 1e-4, 128, 30, 2)}
    assert {c.protocol for c in cfgs} == {"residual_capsules"}


def test_quick_spec_trains_a_residual_capsnet_through_the_runner(tmp_path):
    import json

    from capsbench.cli import main

    overrides = ["model.arch=capsnet", "model.depth=3", "train.epochs=2", "data.subset=300", "data.test_subset=200",
                 "train.batch_size=16", "output.progress=false", "output.quiet=true"]  # fmt: skip
    assert main(["run", str(REPO / "specs/baselines_quick.yaml"), "--out", str(tmp_path), *overrides]) == 0
    (path,) = tmp_path.glob("baselines_quick/*/record.json")
    record = json.loads(path.read_text())
    m = record["metrics"]
    assert record["status"] == "ok" and record["config"]["model"]["residual"] is True
    assert m["layer_order"] == ["primary", "conv1", "conv2", "conv3", "class"]
    assert m["avg_dead_conv"] is not None and set(m["grad_norms"]) >= {"conv1", "conv2", "conv3", "backbone"}
    assert m["test_accuracy"] > 0.3, "chance is 0.1"
