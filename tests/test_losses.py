"""The training objective: losses against hand-computed values, optimisers and schedules from config."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from capsbench.config import OptimizerConfig, SchedulerConfig
from capsbench.errors import UserError
from capsbench.registry import LOSSES
from capsbench.train.losses import CrossEntropyLoss, MarginLoss, NLLLoss, SpreadLoss, build_loss
from capsbench.train.optim import build_optimizer, build_scheduler

# Two samples, three classes; targets 0 and 2.
A = torch.tensor([[0.9, 0.5, 0.1], [0.3, 0.6, 0.2]])
T = torch.tensor([0, 2])


def test_registry_names_resolve_to_the_loss_classes():
    assert LOSSES.get("spread") is SpreadLoss
    assert LOSSES.get("margin") is MarginLoss
    assert LOSSES.get("nll") is NLLLoss
    assert LOSSES.get("cross_entropy") is CrossEntropyLoss


# -- spread loss: sum_{i != t} max(0, m - (a_t - a_i))^2, batch mean ------------------------------


def test_spread_margin_schedule_endpoints():
    loss = SpreadLoss()
    assert loss.margin(0.0) == pytest.approx(0.2)
    assert loss.margin(0.5) == pytest.approx(0.55)
    assert loss.margin(1.0) == pytest.approx(0.9)
    assert loss.margin(1.7) == pytest.approx(0.9)  # clamped: progress past the end keeps the final margin
    assert SpreadLoss(m_max=0.4).margin(1.0) == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("options", "progress", "expected"),
    [
        # m = 0.2: sample 1 gaps 0.2-0.4<0, 0.2-0.8<0 -> 0; sample 2 (a_t = 0.2): 0.3^2 + 0.6^2 = 0.45
        ({}, 0.0, (0.0 + 0.45) / 2),
        # m = 0.9: sample 1: 0.5^2 + 0.1^2 = 0.26; sample 2: 1.0^2 + 1.3^2 = 2.69
        ({}, 1.0, (0.26 + 2.69) / 2),
        # m = 0.55: sample 1: 0.15^2 = 0.0225; sample 2: 0.65^2 + 0.95^2 = 1.325
        ({}, 0.5, (0.0225 + 1.325) / 2),
        # SR-CapsNet's schedule ends at 0.4: sample 1: 0; sample 2: 0.5^2 + 0.8^2 = 0.89
        ({"m_max": 0.4}, 1.0, (0.0 + 0.89) / 2),
    ],
)
def test_spread_loss_hand_computed(options, progress, expected):
    assert build_loss("spread", options)(A, T, progress).item() == pytest.approx(expected, abs=1e-6)


def test_spread_loss_ignores_the_target_class_and_is_zero_when_separated():
    a = torch.tensor([[1.0, 0.0, 0.0]])
    assert SpreadLoss()(a, torch.tensor([0]), 1.0).item() == pytest.approx(0.0, abs=1e-7)  # gap 1 > m = 0.9
    # the target's own term would be max(0, m - 0)^2 = m^2 if it were not masked out
    assert SpreadLoss()(torch.full((1, 3), 0.5), torch.tensor([1]), 0.0).item() == pytest.approx(2 * 0.2**2)


# -- margin loss (Sabour): m+ 0.9, m- 0.1, lambda 0.5 ---------------------------------------------


def test_margin_loss_hand_computed():
    a = torch.tensor([[0.95, 0.3, 0.05], [0.5, 0.2, 0.7]])
    t = torch.tensor([0, 1])
    # sample 1: present 0; absent 0.5 * 0.2^2 = 0.02.  sample 2: present 0.7^2 = 0.49; absent 0.5*(0.16+0.36) = 0.26
    assert MarginLoss()(a, t).item() == pytest.approx((0.02 + 0.75) / 2, abs=1e-6)
    # options change the figure: no down-weighting of absent classes
    assert build_loss("margin", {"down_weight": 1.0})(a, t).item() == pytest.approx((0.04 + 1.01) / 2, abs=1e-6)


# -- NLL on log(activation), clamped -----------------------------------------------------------------


def test_nll_loss_hand_computed_and_clamped():
    a = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    t = torch.tensor([0, 2])
    assert NLLLoss()(a, t).item() == pytest.approx(-(math.log(0.7) + math.log(0.5)) / 2, rel=1e-6)
    dead = torch.tensor([[0.0, 1.0]], requires_grad=True)
    value = NLLLoss(eps=1e-8)(dead, torch.tensor([0]))
    assert value.item() == pytest.approx(-math.log(1e-8), rel=1e-6)
    value.backward()
    assert torch.isfinite(dead.grad).all()


# -- cross-entropy on activations as logits (VB reference) -------------------------------------------


def test_cross_entropy_treats_activations_as_logits():
    a = torch.tensor([[1.0, 0.0, 0.0]])
    # the best case for activations in [0, 1]: log(1 + (C - 1) / e), far from 0 (documented)
    assert CrossEntropyLoss()(a, torch.tensor([0])).item() == pytest.approx(math.log(1 + 2 / math.e), rel=1e-6)
    soft = torch.softmax(A, dim=1)
    expected = -(soft[0, 0].log() + soft[1, 2].log()).item() / 2
    assert CrossEntropyLoss()(A, T).item() == pytest.approx(expected, rel=1e-6)


def test_losses_compute_in_float32_under_low_precision_inputs():
    value = SpreadLoss()(A.to(torch.bfloat16), T, 1.0)
    assert value.dtype == torch.float32


def test_losses_backpropagate():
    for name in ("spread", "margin", "nll", "cross_entropy"):
        a = A.clone().requires_grad_()
        build_loss(name)(a, T, 0.5).backward()
        assert a.grad is not None and a.grad.abs().sum() > 0, name


# -- options and names -------------------------------------------------------------------------------


def test_unknown_loss_option_names_the_key_with_did_you_mean():
    with pytest.raises(UserError, match=r"train\.loss_options\.m_maxx: .*did you mean 'm_max'"):
        build_loss("spread", {"m_maxx": 0.4})


@pytest.mark.parametrize(
    ("name", "options", "key"),
    [
        ("spread", {"m_max": "high"}, "m_max"),
        ("spread", {"m_min": 0.5, "m_max": 0.3}, "m_max"),
        ("margin", {"m_plus": True}, "m_plus"),
        ("nll", {"eps": -1.0}, "eps"),
    ],
)
def test_bad_loss_option_values_name_the_key(name, options, key):
    with pytest.raises(UserError, match=rf"train\.loss_options\.{key}:"):
        build_loss(name, options)


def test_unknown_loss_name_names_the_key():
    with pytest.raises(UserError, match=r"train\.loss: unknown loss 'sprad' \(did you mean 'spread'\?\)"):
        build_loss("sprad")


# -- optimisers and schedules --------------------------------------------------------------------------


def _params():
    return [torch.nn.Parameter(torch.zeros(2))]


def test_sgd_gets_only_its_fields():
    opt = build_optimizer(_params(), OptimizerConfig(name="sgd", lr=0.05, momentum=0.8, weight_decay=1e-3))
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.8, 1e-3)
    assert "betas" not in group


@pytest.mark.parametrize(("name", "cls"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_family_gets_betas_and_eps(name, cls):
    cfg = OmegaConf.structured(OptimizerConfig(name=name, lr=1e-3, betas=[0.8, 0.99], eps=1e-6, weight_decay=0.0))
    opt = build_optimizer(_params(), cfg)
    assert isinstance(opt, cls)
    group = opt.param_groups[0]
    assert group["betas"] == (0.8, 0.99) and group["eps"] == 1e-6 and group["weight_decay"] == 0.0
    assert "momentum" not in group


def test_optimizer_errors_name_the_key():
    with pytest.raises(UserError, match=r"train\.optimizer\.name: unknown optimizer 'adm'"):
        build_optimizer(_params(), OptimizerConfig(name="adm"))
    with pytest.raises(UserError, match=r"train\.optimizer\.lr"):
        build_optimizer(_params(), OptimizerConfig(lr=0.0))
    with pytest.raises(UserError, match=r"train\.optimizer:"):
        build_optimizer(_params(), OptimizerConfig(name="adam", betas=[1.5, 0.9]))


def _lrs(cfg: SchedulerConfig, epochs: int = 4) -> list[float]:
    opt = torch.optim.SGD(_params(), lr=0.1)
    sched = build_scheduler(opt, cfg, epochs)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_schedules_per_epoch():
    assert _lrs(SchedulerConfig(name="none")) == pytest.approx([0.1] * 4)
    assert _lrs(SchedulerConfig(name="step", step_size=2, gamma=0.5)) == pytest.approx([0.1, 0.1, 0.05, 0.05])
    assert _lrs(SchedulerConfig(name="exponential", gamma=0.5)) == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    cosine = _lrs(SchedulerConfig(name="cosine", min_lr=0.01), epochs=4)
    expected = [0.01 + 0.09 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert cosine == pytest.approx(expected)


def test_scheduler_errors_name_the_key():
    opt = torch.optim.SGD(_params(), lr=0.1)
    with pytest.raises(UserError, match=r"train\.scheduler\.name: unknown scheduler 'cosin'"):
        build_scheduler(opt, SchedulerConfig(name="cosin"), 3)
