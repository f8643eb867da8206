"""Training losses on class activations in [0, 1].

Every loss is an ``nn.Module`` with ``forward(activations [N, C], target [N],
progress=0.0) -> scalar``; ``progress`` is the fraction of training done (only the
spread loss uses it). Losses compute in float32 whatever autocast produced.
Options come from ``train.loss_options`` and are checked by :func:`build_loss`.

Example::

    loss = build_loss("spread", {"m_max": 0.4})          # SR-CapsNet's EM margin schedule
    loss(torch.tensor([[0.9, 0.5]]), torch.tensor([0]), progress=0.0)   # max(0, 0.2 - 0.4)^2 = 0
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from capsbench.errors import UserError, did_you_mean
from capsbench.registry import LOSSES


def _number(key: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    """``value`` as a float within [lo, hi], or a UserError naming ``train.loss_options.<key>``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"train.loss_options.{key}: expected a number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise UserError(f"train.loss_options.{key}: expected a number in [{lo}, {hi}], got {value!r}")
    return float(value)


class SpreadLoss(nn.Module):
    """Spread loss (Hinton et al. 2018): ``sum_{i != t} max(0, m - (a_t - a_i))^2``, batch mean.

    The margin grows linearly with training: ``m = m_min + (m_max - m_min) * progress``.
    Defaults 0.2 -> 0.9 follow yl-1993; SR-CapsNet's EM model uses ``m_max: 0.4``.
    """

    def __init__(self, m_min: float = 0.2, m_max: float = 0.9):
        super().__init__()
        self.m_min = _number("m_min", m_min, 0.0, 1.0)
        self.m_max = _number("m_max", m_max, 0.0, 1.0)
        if self.m_max < self.m_min:
            raise UserError(f"train.loss_options.m_max: must be >= m_min ({m_min}), got {m_max}")

    def margin(self, progress: float) -> float:
        return self.m_min + (self.m_max - self.m_min) * min(max(float(progress), 0.0), 1.0)

    def forward(self, activations: torch.Tensor, target: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
        a = activations.float()
        a_t = a.gather(1, target.unsqueeze(1))
        gap = (self.margin(progress) - (a_t - a)).clamp(min=0).pow(2)
        wrong = F.one_hot(target, a.shape[1]) == 0
        return (gap * wrong).sum(dim=1).mean()


class MarginLoss(nn.Module):
    """Margin loss (Sabour et al. 2017) on capsule lengths, summed over classes, batch mean.

    ``T_k max(0, m_plus - a_k)^2 + down_weight (1 - T_k) max(0, a_k - m_minus)^2``.
    """

    def __init__(self, m_plus: float = 0.9, m_minus: float = 0.1, down_weight: float = 0.5):
        super().__init__()
        self.m_plus = _number("m_plus", m_plus, 0.0, 1.0)
        self.m_minus = _number("m_minus", m_minus, 0.0, 1.0)
        self.down_weight = _number("down_weight", down_weight, 0.0)

    def forward(self, activations: torch.Tensor, target: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
        a = activations.float()
        t = F.one_hot(target, a.shape[1]).to(a.dtype)
        present = t * (self.m_plus - a).clamp(min=0).pow(2)
        absent = self.down_weight * (1 - t) * (a - self.m_minus).clamp(min=0).pow(2)
        return (present + absent).sum(dim=1).mean()


class NLLLoss(nn.Module):
    """Negative log-likelihood of ``log(max(a, eps))`` (SR-CapsNet; its activations sum to 1).

    The clamp keeps a dead class capsule (a = 0) from giving an infinite loss.
    """

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = _number("eps", eps, 0.0, 1.0)

    def forward(self, activations: torch.Tensor, target: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
        return F.nll_loss(activations.float().clamp(min=self.eps).log(), target)


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy with the class activations used directly as logits (the VB reference).

    Activations live in [0, 1], so the logits differ by at most 1 and the loss cannot
    go below ``log(1 + (C - 1) / e)`` (about 1.46 for 10 classes): accuracy, not this
    loss, is the figure to compare.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = _number("label_smoothing", label_smoothing, 0.0, 1.0)

    def forward(self, activations: torch.Tensor, target: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
        return F.cross_entropy(activations.float(), target, label_smoothing=self.label_smoothing)


def option_names(factory) -> list[str] | None:
    """The keyword options a loss accepts; None when it takes ``**kwargs`` (anything goes)."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def build_loss(name: str, options: dict | None = None) -> nn.Module:
    """The loss registered as ``name`` with ``options``; bad names and options raise UserError."""
    LOSSES.check(name, "train.loss")
    factory = LOSSES.get(name)
    options = dict(options or {})
    allowed = option_names(factory)
    if allowed is not None:
        for key in options:
            if key not in allowed:
                raise UserError(
                    f"train.loss_options.{key}: unknown option of loss '{name}'{did_you_mean(key, allowed)}; "
                    f"expected one of: {', '.join(allowed) or '(none)'}"
                )
    return factory(**options)
