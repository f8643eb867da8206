"""Optimisers and per-epoch learning-rate schedules, built from the run config.

Example::

    opt = build_optimizer(model.parameters(), cfg.train.optimizer)      # torch.optim.SGD, ...
    sched = build_scheduler(opt, cfg.train.scheduler, cfg.train.epochs) # stepped once per epoch
"""

from __future__ import annotations

import inspect

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, ExponentialLR, LambdaLR, LRScheduler, StepLR

from capsbench.errors import UserError
from capsbench.registry import OPTIMIZERS, SCHEDULERS

# OptimizerConfig fields; each is passed only to optimisers whose constructor takes it
# (SGD: lr, momentum, weight_decay; Adam/AdamW: lr, betas, eps, weight_decay).
OPTIMIZER_FIELDS = ("lr", "momentum", "weight_decay", "betas", "eps")


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
    """The optimiser ``cfg.name`` from the OPTIMIZERS registry, given the fields it accepts."""
    OPTIMIZERS.check(cfg.name, "train.optimizer.name")
    factory = OPTIMIZERS.get(cfg.name)
    accepted = inspect.signature(factory).parameters
    kwargs = {}
    for key in OPTIMIZER_FIELDS:
        if key in accepted:
            value = getattr(cfg, key)
            kwargs[key] = tuple(float(v) for v in value) if key == "betas" else value
    if not kwargs.get("lr", 1.0) > 0:
        raise UserError(f"train.optimizer.lr: expected a positive learning rate, got {kwargs['lr']!r}")
    try:
        return factory(params, **kwargs)
    except (TypeError, ValueError) as exc:  # torch validates ranges (betas, eps, ...)
        raise UserError(f"train.optimizer: {cfg.name} rejected {kwargs}: {exc}") from None


def _one(epoch: int) -> float:
    return 1.0


def constant_schedule(optimizer, cfg, epochs: int) -> LRScheduler:
    """The learning rate stays put."""
    return LambdaLR(optimizer, _one)


def step_schedule(optimizer, cfg, epochs: int) -> LRScheduler:
    """Multiply by ``gamma`` every ``step_size`` epochs (both checked when the spec loaded)."""
    return StepLR(optimizer, step_size=int(cfg.step_size), gamma=_gamma(cfg))


def exponential_schedule(optimizer, cfg, epochs: int) -> LRScheduler:
    """Multiply by ``gamma`` every epoch."""
    return ExponentialLR(optimizer, gamma=_gamma(cfg))


def cosine_schedule(optimizer, cfg, epochs: int) -> LRScheduler:
    """Cosine from the initial rate down to ``min_lr`` over the run's epochs."""
    return CosineAnnealingLR(optimizer, T_max=max(1, int(epochs)), eta_min=float(cfg.min_lr))


def _gamma(cfg) -> float:
    return float(cfg.gamma)


def build_scheduler(optimizer, cfg, epochs: int) -> LRScheduler:
    """The schedule ``cfg.name`` from the SCHEDULERS registry: ``f(optimizer, cfg, epochs)``."""
    SCHEDULERS.check(cfg.name, "train.scheduler.name")
    return SCHEDULERS.get(cfg.name)(optimizer, cfg, epochs)
