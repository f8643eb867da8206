"""Telemetry: eq. 12 and 13 on crafted activations, gradient norms, accuracy, layer discovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from capsbench.capsules.types import Capsules
from capsbench.metrics.accuracy import Accuracy
from capsbench.metrics.activations import CapsuleActivations, dead_summary
from capsbench.metrics.grad_norms import GradNorms
from capsbench.metrics.layers import capsule_layers
from capsbench.registry import METRICS


class Replay(nn.Module):
    """A capsule layer that outputs the activations it is given (for crafted eq. 12 inputs)."""

    def __init__(self, name: str, kind: str):
        super().__init__()
        self.name, self.kind = name, kind

    def forward(self, activation: torch.Tensor) -> Capsules:
        return Capsules(activation.unsqueeze(2), activation)


class ReplayNet(nn.Module):
    def __init__(self, layers: list[tuple[str, str]]):
        super().__init__()
        self.capsule_layers = nn.ModuleList([Replay(n, k) for n, k in layers])

    def forward(self, batch: dict[str, torch.Tensor]):
        return [layer(batch[layer.name]) for layer in self.capsule_layers]


def test_registry_names_resolve():
    assert METRICS.get("accuracy") is Accuracy
    assert METRICS.get("capsule_activations") is CapsuleActivations
    assert METRICS.get("grad_norms") is GradNorms


# -- eq. 12: the mean over every image and position of the epoch -------------------------------------


def test_eq12_mean_over_all_batches_and_positions_with_uneven_batches():
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(n, 4, 3, 2, generator=gen) for n in (5, 2, 1)]  # last batches smaller
    net = ReplayNet([("conv1", "conv")])
    with CapsuleActivations(net) as acts:
        for b in batches:
            net({"conv1": b})
    everything = torch.cat(batches).double()  # [8, 4, 3, 2]
    expected = everything.permute(1, 0, 2, 3).reshape(4, -1).mean(dim=1).numpy()
    np.testing.assert_allclose(acts.means()["conv1"], expected, rtol=1e-12)
    # not the mean of per-batch means, which over-weights the small last batches
    per_batch = np.mean([b.double().mean(dim=(0, 2, 3)).numpy() for b in batches], axis=0)
    assert not np.allclose(acts.means()["conv1"], per_batch, rtol=1e-6)


def test_eq12_accepts_activations_without_spatial_dims():
    net = ReplayNet([("class", "class")])
    with CapsuleActivations(net) as acts:
        acts.add("class", torch.tensor([[0.2, 0.4], [0.6, 0.0]]))
    np.testing.assert_allclose(acts.means()["class"], [0.4, 0.2])


# -- eq. 13: dead if A_i <= threshold, inclusive ------------------------------------------------------


def _constant(n: int, values: list[float]) -> torch.Tensor:
    """Activations [n, T, 2, 2] in float32 (what models produce) with type i equal to values[i] everywhere."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).expand(n, -1, 2, 2).contiguous()


def test_eq13_threshold_boundary_is_inclusive_across_uneven_batches():
    values = [0.01, 0.0100001, 0.0, 0.5]
    net = ReplayNet([("conv1", "conv")])
    with CapsuleActivations(net, threshold=0.01) as acts:
        net({"conv1": _constant(3, values)})
        net({"conv1": _constant(1, values)})
    summary = acts.summary()["layers"]["conv1"]
    dead = [a <= 0.01 for a in summary["types"]]
    assert dead == [True, False, True, False]  # exactly 0.01 is dead, 0.0100001 is alive
    assert summary["dead_count"] == 2
    assert summary["dead_fraction"] == 0.5
    assert summary["mean_activation"] == pytest.approx(np.mean(np.float32(values).astype(np.float64)))


def test_eq13_uses_the_epoch_mean_not_single_values():
    # type 0: half 0.02, half 0.0 -> mean 0.01 -> dead although half the values are alive;
    # type 1: one image at 1.0 among zeros -> mean 1/8 of a batch of 8 -> alive
    a = torch.zeros(8, 2, 1, 1)
    a[:4, 0] = 0.02
    a[0, 1] = 1.0
    net = ReplayNet([("conv1", "conv")])
    with CapsuleActivations(net) as acts:
        net({"conv1": a[:5]})
        net({"conv1": a[5:]})
    assert acts.summary()["layers"]["conv1"]["dead_count"] == 1
    assert acts.summary()["layers"]["conv1"]["types"][0] <= 0.01


def test_threshold_is_configurable():
    net = ReplayNet([("conv1", "conv")])
    with CapsuleActivations(net, threshold=0.3) as acts:
        net({"conv1": _constant(2, [0.3, 0.31])})
    assert acts.summary()["layers"]["conv1"]["dead_count"] == 1


def test_dead_summary_averages_over_conv_layers_only():
    means = {
        "primary": np.array([0.0, 0.0, 0.0, 0.0]),  # 4 dead, not a ConvCaps layer
        "conv1": np.array([0.0, 0.5, 0.0, 0.5]),  # 2 dead
        "conv2": np.array([0.0, 0.0, 0.0, 0.5]),  # 3 dead
        "class": np.array([0.0, 0.9]),  # 1 dead, not a ConvCaps layer
    }
    kinds = {"primary": "primary", "conv1": "conv", "conv2": "conv", "class": "class"}
    s = dead_summary(means, kinds, 0.01)
    assert s["avg_dead_conv"] == 2.5
    assert s["dead_total"] == 10
    assert s["layers"]["conv2"]["dead_fraction"] == 0.75
    assert dead_summary({"primary": means["primary"]}, kinds)["avg_dead_conv"] is None


def test_hooks_are_removed_on_exit():
    net = ReplayNet([("conv1", "conv"), ("conv2", "conv")])
    acts = CapsuleActivations(net)
    with acts:
        assert all(len(layer._forward_hooks) == 1 for layer in net.capsule_layers)
        net({"conv1": _constant(1, [0.5]), "conv2": _constant(1, [0.5])})
    assert all(len(layer._forward_hooks) == 0 for layer in net.capsule_layers)
    net({"conv1": _constant(1, [0.0]), "conv2": _constant(1, [0.0])})  # not observed any more
    assert acts.means()["conv1"][0] == pytest.approx(0.5)


def test_hooks_are_removed_when_the_epoch_raises():
    net = ReplayNet([("conv1", "conv")])
    with pytest.raises(RuntimeError), CapsuleActivations(net):
        raise RuntimeError("boom")
    assert len(net.capsule_layers[0]._forward_hooks) == 0


# -- layer discovery -------------------------------------------------------------------------------------


def test_capsule_layers_from_modulelist_and_moduledict():
    net = ReplayNet([("primary", "primary"), ("conv1", "conv"), ("class", "class")])
    assert [(layer.name, layer.kind) for layer in capsule_layers(net)] == [
        ("primary", "primary"),
        ("conv1", "conv"),
        ("class", "class"),
    ]

    class DictNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.capsule_layers = nn.ModuleDict({"a": Replay("a", "conv"), "b": Replay("b", "class")})

    assert [layer.name for layer in capsule_layers(DictNet())] == ["a", "b"]


def test_capsule_layers_found_by_marker_class_without_the_attribute():
    layers = pytest.importorskip("capsbench.capsules.layers", reason="capsule layer library not written yet")

    class Marked(layers.CapsuleLayer):
        kind = "conv"

        def forward(self, x):
            return x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Identity(), Marked(), Marked())
            self.body[1].name, self.body[2].name = "conv1", "conv2"

    assert [(layer.name, layer.kind) for layer in capsule_layers(Net())] == [("conv1", "conv"), ("conv2", "conv")]


# -- gradient norms ----------------------------------------------------------------------------------------


class Scale(nn.Module):
    """A capsule layer with one weight: activation' = sigmoid(w * activation), pose' = w * pose."""

    def __init__(self, name: str, kind: str, types: int):
        super().__init__()
        self.name, self.kind = name, kind
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, types).view(1, types, 1, 1))

    def forward(self, caps: Capsules) -> Capsules:
        return Capsules(caps.pose * self.w.unsqueeze(2), torch.sigmoid(self.w * caps.activation))


class ScaleNet(nn.Module):
    def __init__(self, types: int = 3, depth: int = 3):
        super().__init__()
        self.backbone = nn.Conv2d(1, types, 1)
        self.capsule_layers = nn.ModuleList([Scale(f"conv{i + 1}", "conv", types) for i in range(depth)])

    def forward(self, x):
        a = torch.sigmoid(self.backbone(x))
        caps = Capsules(a.unsqueeze(2).expand(-1, -1, 2, -1, -1), a)
        for layer in self.capsule_layers:
            caps = layer(caps)
        return (caps.activation + 0.1 * caps.pose.mean(dim=2)).mean(dim=(2, 3))


def test_grad_norms_match_autograd():
    torch.manual_seed(0)
    net = ScaleNet()
    x = torch.randn(4, 1, 3, 3)
    target = torch.tensor([0, 1, 2, 0])

    # reference: gradients w.r.t. every layer input, with retain_grad
    inputs = {}

    def keep(module, args):
        for t in (args[0].pose, args[0].activation):
            t.retain_grad()
        inputs[module.name] = args[0]

    handles = [layer.register_forward_pre_hook(keep) for layer in net.capsule_layers]
    nn.functional.cross_entropy(net(x), target).backward()
    for h in handles:
        h.remove()
    ref = {
        name: (
            float(torch.sqrt(c.pose.grad.pow(2).sum() + c.activation.grad.pow(2).sum())),
            float(c.activation.grad.norm()),
        )
        for name, c in inputs.items()
    }
    ref_weight = {layer.name: float(layer.w.grad.norm()) for layer in net.capsule_layers}
    ref_backbone = float(torch.sqrt(sum(p.grad.pow(2).sum() for p in net.backbone.parameters())))

    net.zero_grad()
    gn = GradNorms(net, every=1)
    with gn.watch():
        nn.functional.cross_entropy(net(x), target).backward()
    sample = gn.collect()
    for name, (inp, act) in ref.items():
        assert float(sample[name]["input"]) == pytest.approx(inp, rel=1e-5)
        assert float(sample[name]["input_activation"]) == pytest.approx(act, rel=1e-5)
        assert float(sample[name]["weight"]) == pytest.approx(ref_weight[name], rel=1e-5)
    assert float(sample["backbone"]["weight"]) == pytest.approx(ref_backbone, rel=1e-5)
    # hooks are gone after the step: no more input gradients are caught
    assert all(len(layer._forward_pre_hooks) == 0 for layer in net.capsule_layers)


def test_grad_norms_sampling_and_flush():
    net = ScaleNet(depth=1)
    gn = GradNorms(net, every=3)
    assert [s for s in range(10) if gn.due(s)] == [0, 3, 6, 9]
    assert not GradNorms(net, every=0).due(0)
    norms = []
    for scale in (1.0, 2.0):
        net.zero_grad()
        with gn.watch():
            (scale * net(torch.ones(1, 1, 2, 2)).sum()).backward()
        norms.append(float(gn.collect()["conv1"]["weight"]))
    mean, last = gn.flush()
    assert mean["conv1"]["weight"] == pytest.approx(sum(norms) / 2)
    assert last["conv1"]["weight"] == pytest.approx(norms[1])
    assert gn.flush() == ({}, {})


def test_grad_norms_divide_out_the_loss_scale():
    net = ScaleNet(depth=1)
    gn = GradNorms(net, every=1)
    x = torch.ones(2, 1, 2, 2)
    with gn.watch():
        net(x).sum().backward()
    plain = float(gn.collect()["conv1"]["input"])
    net.zero_grad()
    with gn.watch():
        (net(x).sum() * 1024.0).backward()
    assert float(gn.collect(grad_scale=1024.0)["conv1"]["input"]) == pytest.approx(plain, rel=1e-6)


# -- accuracy -------------------------------------------------------------------------------------------


def test_accuracy_and_mean_loss_over_uneven_batches():
    acc = Accuracy()
    acc.update(torch.tensor([[0.9, 0.1], [0.2, 0.7], [0.6, 0.4]]), torch.tensor([0, 0, 0]), torch.tensor(0.3))
    acc.update(torch.tensor([[0.1, 0.8]]), torch.tensor([1]), torch.tensor(0.7))
    m = acc.compute()
    assert m["accuracy"] == 0.75
    assert m["loss"] == pytest.approx((0.3 * 3 + 0.7) / 4)
    assert m["count"] == 4
    assert Accuracy().compute()["accuracy"] is None
