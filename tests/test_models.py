"""The capsule network builder: every routing and depth builds and trains; bad values are UserErrors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from capsbench.capsules.layers import CapsuleLayer, ClassCaps, ConvCaps, PrimaryCaps
from capsbench.config import ModelConfig
from capsbench.errors import UserError
from capsbench.models.backbones import EMStem, ResNet20, SRConvNet, TinyConvNet, VBStem
from capsbench.models.capsnet import build_capsnet
from capsbench.registry import BACKBONES, MODELS, ROUTINGS, build

ROUTING_NAMES = ROUTINGS.names()


def small(**kw) -> ModelConfig:
    """A tiny model: tiny backbone, 4 capsule types."""
    base = dict(backbone="tiny", capsule_types=4, primary_types=4, pose_dim=16, iterations=2)
    return ModelConfig(**{**base, **kw})


def train_step(model, x, seed=0):
    torch.manual_seed(seed)
    model.train()
    out = model(x)
    loss = (out * torch.linspace(-1, 1, out.shape[1])).sum()
    loss.backward()
    return out


@pytest.mark.parametrize("routing", ROUTING_NAMES)
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_every_routing_and_depth_builds_and_trains(routing, depth):
    cls = ROUTINGS.get(routing)
    torch.manual_seed(0)
    model = build_capsnet(small(routing=routing, depth=depth), num_classes=5, in_channels=1, image_size=(32, 32))
    out = train_step(model, torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 5) and ((out >= 0) & (out <= 1)).all()
    names = [layer.name for layer in model.capsule_layers]
    assert names == ["primary", *[f"conv{k}" for k in range(1, depth + 1)], "class"]
    assert [layer.kind for layer in model.capsule_layers] == ["primary"] + ["conv"] * depth + ["class"]
    assert model.reference_loss == cls.loss and model.depth == depth
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_self_routing_builds_at_every_depth_up_to_ten():
    for depth in range(11):
        model = build_capsnet(small(routing="self", depth=depth), 10, 1, (32, 32))
        convs = [layer for layer in model.capsule_layers if layer.kind == "conv"]
        assert len(convs) == depth
        assert all((c.kernel_size, c.stride, c.padding) == (3, 1, 1) for c in convs)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_paper_depth_layers_use_capsule_types_and_keep_the_grid():
    cfg = ModelConfig(routing="self", backbone="sr_convnet", depth=2, capsule_types=16, primary_types=8)
    model = build_capsnet(cfg, 10, 1, (32, 32))
    seen = {}
    for layer in model.capsule_layers:
        layer.register_forward_hook(lambda m, args, out: seen.__setitem__(m.name, tuple(out.activation.shape)))
    with torch.no_grad():
        model.eval()(torch.zeros(2, 1, 32, 32))
    assert seen == {"primary": (2, 8, 4, 4), "conv1": (2, 16, 4, 4), "conv2": (2, 16, 4, 4), "class": (2, 10, 1, 1)}


@pytest.mark.parametrize("backbone", ["sr_convnet", "tiny", "resnet20", "vb_stem", "em_stem"])
@pytest.mark.parametrize("size", [28, 32, 48])
def test_image_sizes_give_valid_models(backbone, size):
    model = build_capsnet(small(routing="dynamic", backbone=backbone, depth=1), 10, 3, (size, size))
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, size, size))
    assert out.shape == (1, 10) and ((out >= 0) & (out <= 1)).all()


def test_class_layer_adapts_to_the_backbone_grid():
    model = build_capsnet(small(routing="self", backbone="resnet20", depth=1), 10, 3, (32, 32))
    assert model.caps["class"].in_hw == (8, 8)  # paper head: stride 1 everywhere
    ref = build_capsnet(small(routing="self", backbone="resnet20", depth=2, options={"head": "reference"}), 10, 3, 32)
    assert ref.caps["conv1"].stride == 2 and ref.caps["class"].in_hw == (4, 4)  # SR-CapsNet's ResNet variant
    assert build_capsnet(small(routing="self", backbone="tiny"), 10, 1, (28, 36)).caps["class"].in_hw == (4, 5)


@pytest.mark.parametrize("routing", ["em", "vb"])
def test_reference_head_keeps_the_original_stem(routing):
    backbone = {"em": "em_stem", "vb": "vb_stem"}[routing]
    cfg = small(routing=routing, backbone=backbone, depth=1, primary_types=8, options={"head": "reference"})
    model = build_capsnet(cfg, 10, 1, (32, 32))
    names = [layer.name for layer in model.capsule_layers]
    assert names == ["primary", "head1", "head2", "conv1", "class"]
    assert [(model.caps[n].kernel_size, model.caps[n].stride, model.caps[n].padding) for n in ("head1", "head2")] == [
        (3, 2, 0),
        (3, 1, 0),
    ]
    # VB: 32 -> conv 5x5 s2 -> 14 -> 3x3 s2 -> 6 -> 3x3 s1 -> 4; EM: 32 -> 16 -> 7 -> 5
    assert model.caps["class"].in_hw == {"vb": (4, 4), "em": (5, 5)}[routing]
    assert model.caps["class"].mode == "shared"
    train_step(model, torch.randn(2, 1, 32, 32))


def test_method_defaults_primary_caps_class_caps_and_pose_norm():
    sr = build_capsnet(small(routing="self", depth=1), 10, 1, 32)
    assert sr.caps["primary"].activation == "sigmoid" and sr.caps["class"].mode == "conv"
    assert sr.caps["conv1"].pose_norm is not None
    dr = build_capsnet(small(routing="dynamic", depth=1), 10, 1, 32)
    assert dr.caps["primary"].activation == "length" and dr.caps["conv1"].pose_norm is None
    assert build_capsnet(small(routing="self", depth=1, pose_norm=False), 10, 1, 32).caps["conv1"].pose_norm is None
    vb = build_capsnet(small(routing="dynamic", backbone="vb_stem"), 10, 1, 32)
    assert vb.caps["primary"].pose_conv.kernel_size == (1, 1)
    shared = build_capsnet(small(routing="self", options={"class_caps": "shared"}), 10, 1, 32)
    assert shared.caps["class"].mode == "shared"


def test_residual_adds_the_capsules_from_two_layers_back():
    torch.manual_seed(0)
    model = build_capsnet(small(routing="self", depth=3, residual=True), 10, 1, (32, 32)).eval()
    seen = {}
    for layer in model.capsule_layers:
        layer.register_forward_hook(lambda m, args, out: seen.__setitem__(m.name, (args[0], out)))
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32))
    conv1_out, conv2_out, conv3_out = (seen[f"conv{i}"][1] for i in (1, 2, 3))
    # res-capsnet's rule: stacked layer i (from 0) adds layer i-2's own output when i is even > 0
    torch.testing.assert_close(seen["conv2"][0].pose, conv1_out.pose)  # no skip into conv2
    torch.testing.assert_close(seen["conv3"][0].pose, conv2_out.pose)  # none out of conv2 either
    class_in = seen["class"][0]
    torch.testing.assert_close(class_in.pose, conv3_out.pose + conv1_out.pose)  # conv3 <- conv1
    a, b = conv3_out.activation, conv1_out.activation
    torch.testing.assert_close(class_in.activation, a + b - a * b)
    assert ((class_in.activation >= 0) & (class_in.activation <= 1)).all()
    # types that do not match: no skip from the primary capsules
    plain = build_capsnet(small(routing="self", depth=2, residual=True, primary_types=3), 10, 1, 32)
    with torch.no_grad():
        plain.eval()(torch.randn(1, 1, 32, 32))


@pytest.mark.parametrize("routing", ROUTING_NAMES)
def test_checkpointing_gives_identical_outputs_and_gradients(routing):
    def run(checkpointing):
        torch.manual_seed(0)
        model = build_capsnet(small(routing=routing, depth=2, checkpointing=checkpointing), 5, 1, (32, 32))
        out = train_step(model, torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)))
        grads = {n: p.grad for n, p in model.named_parameters()}
        return out, grads, {n: b.clone() for n, b in model.named_buffers()}

    (a, ga, ba), (b, gb, bb) = run(False), run(True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ga.keys() == gb.keys()
    for name in ga:
        if ga[name] is None:
            assert gb[name] is None
        else:
            torch.testing.assert_close(ga[name], gb[name], rtol=1e-5, atol=1e-6, msg=name)
    for name in ba:
        torch.testing.assert_close(ba[name], bb[name], rtol=0, atol=0, msg=name)


def test_checkpointing_flag_reaches_every_routed_layer():
    model = build_capsnet(small(routing="self", depth=2, checkpointing=True), 10, 1, 32)
    routed = [layer for layer in model.capsule_layers if isinstance(layer, ConvCaps | ClassCaps)]
    assert len(routed) == 3 and all(layer.checkpointing for layer in routed)


def test_registry_entry_and_dictconfig():
    cfg = OmegaConf.structured(small(routing="self", depth=1, routing_options={"eps": 1e-10}))
    model = build(MODELS, "capsnet", cfg, num_classes=3, in_channels=2, image_size=(32, 32))
    assert model.caps["conv1"].routing.eps == 1e-10
    assert all(isinstance(layer, CapsuleLayer) for layer in model.capsule_layers)
    assert isinstance(model.capsule_layers[0], PrimaryCaps)


def test_backbones_are_registered_and_declare_out_channels():
    for name, cls in [
        ("sr_convnet", SRConvNet),
        ("resnet20", ResNet20),
        ("vb_stem", VBStem),
        ("em_stem", EMStem),
        ("tiny", TinyConvNet),
    ]:
        assert BACKBONES.get(name) is cls
        net = cls(in_channels=3).eval()
        with torch.no_grad():
            assert net(torch.zeros(1, 3, 32, 32)).shape[1] == net.out_channels
    sizes = {n: BACKBONES.get(n)(in_channels=1).eval()(torch.zeros(1, 1, 32, 32)).shape[-1] for n in BACKBONES.names()}
    assert {n: sizes[n] for n in ("sr_convnet", "resnet20", "vb_stem", "em_stem", "tiny")} == {
        "sr_convnet": 4,
        "resnet20": 8,
        "vb_stem": 14,
        "em_stem": 16,
        "tiny": 4,
    }


@pytest.mark.parametrize(
    "change,key",
    [
        ({"routing": "dynamic", "pose_dim": 10, "options": {"vote_transform": "matrix"}}, "model.pose_dim"),
        ({"options": {"heads": "paper"}}, "model.options.heads"),
        ({"options": {"head": "mine"}}, "model.options.head"),
        ({"options": {"class_caps": "dense"}}, "model.options.class_caps"),
        ({"options": {"primary": {"kernel": 3}}}, "model.options.primary.kernel"),
        ({"options": {"weight_std": -1}}, "model.options.weight_std"),
        ({"options": {"backbone": {"widht": 3}}}, "model.options.backbone"),
    ],
)
def test_bad_values_are_user_errors_naming_the_key(change, key):
    cfg = dataclasses.replace(small(routing="self"), **change)
    with pytest.raises(UserError) as info:
        build_capsnet(cfg, 10, 1, (32, 32))
    message = str(info.value)
    assert message.startswith(key) and "\n" not in message


def test_matrix_routing_needs_a_square_pose():
    with pytest.raises(UserError, match=r"^model\.pose_dim: expected a perfect square"):
        build_capsnet(small(routing="em", pose_dim=12), 10, 1, (32, 32))


@pytest.mark.parametrize(
    "backbone,size,options",
    [("vb_stem", 4, {}), ("sr_convnet", 0, {}), ("em_stem", 8, {"head": "reference"})],
)
def test_images_too_small_are_user_errors(backbone, size, options):
    routing = "em" if options else "self"
    with pytest.raises(UserError, match=r"^data\.image_size"):
        build_capsnet(small(routing=routing, backbone=backbone, options=options), 10, 1, (size, size))


@pytest.mark.parametrize("routing", ROUTING_NAMES)
def test_bf16_autocast_forward_and_backward(routing):
    torch.manual_seed(0)
    model = build_capsnet(small(routing=routing, depth=1), 5, 1, (32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 1, 32, 32))
    assert torch.isfinite(out).all() and ((out >= 0) & (out <= 1)).all()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_hooks_fire_once_per_layer_per_step_with_checkpointing():
    model = build_capsnet(small(routing="self", depth=2, checkpointing=True), 5, 1, (32, 32))
    calls = []
    for layer in model.capsule_layers:
        layer.register_forward_hook(lambda m, args, out: calls.append((m.name, out.activation.shape)))
    train_step(model, torch.randn(2, 1, 32, 32))
    assert [name for name, _ in calls] == ["primary", "conv1", "conv2", "class"]
