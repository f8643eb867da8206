"""Precise BatchNorm statistics: recompute the running statistics with the current weights.

BatchNorm normalises with batch statistics in training and with running averages
(momentum 0.1: roughly the last ten batches) in evaluation. While the weights still
move fast, those averages trail them. Few optimiser steps (the paper-mini protocol)
make the gap large, and VB routing is hit hardest because its activations come
straight out of a BatchNorm on the activation logits: a VB network at 93% validation
accuracy with batch statistics scored 22% with its running averages and 96% after
they were recomputed ("precise BN", Wu & Johnson 2021, "Rethinking 'Batch' in
BatchNorm"). ``train.precise_bn: N`` recomputes them from the first N training images
(in stored order: no randomness, so resumed runs stay identical) before every
evaluation; 0, the default, keeps the reference implementations' behaviour.

Example::

    recompute_bn_statistics(model, train_set, images=256, batch_size=32, device=torch.device("cpu"))
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset


def batchnorms(model: nn.Module) -> list[nn.Module]:
    """Every module with running statistics and a float ``momentum`` (torch BatchNorms, VB's own)."""
    return [
        m for m in model.modules()
        if isinstance(getattr(m, "momentum", None), float) and hasattr(m, "running_mean") and hasattr(m, "running_var")
    ]


@torch.no_grad()
def recompute_bn_statistics(
    model: nn.Module, dataset, *, images: int, batch_size: int, device: torch.device, autocast=None
) -> int:
    """Replace running statistics by the mean over batches of the first ``images`` images; return batches used."""
    modules = batchnorms(model)
    if not modules or images <= 0:
        return 0
    momenta = [m.momentum for m in modules]
    loader = DataLoader(Subset(dataset, range(min(images, len(dataset)))), batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.train()
    batches = 0
    try:
        for batches, (x, _) in enumerate(loader, 1):
            for m in modules:
                m.momentum = 1.0 / batches  # running = mean of the per-batch statistics so far
            with autocast() if autocast is not None else torch.autocast(device.type, enabled=False):
                model(x.to(device, non_blocking=True))
    finally:
        for m, momentum in zip(modules, momenta):
            m.momentum = momentum
        model.train(was_training)
    return batches
