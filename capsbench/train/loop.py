"""One training epoch and one evaluation epoch.

The loop avoids a host sync per step: loss and accuracy accumulate on the
device and the loss is checked for NaN/inf every ``check_every`` steps and at the
end of the epoch (a diverged epoch is reported as a whole).

Example::

    trainer = Trainer(model, model, loss_fn, optimizer, device=torch.device("cpu"))
    result = train_epoch(trainer, loader, epoch=1, epochs=10, steps=len(loader))
    val = evaluate(trainer, val_loader, progress=0.1)
    val.means          # eq. 12 per capsule layer: {"conv1": array([...]), ...}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from capsbench.metrics.accuracy import Accuracy
from capsbench.metrics.activations import CapsuleActivations
from capsbench.metrics.grad_norms import GradNorms
from capsbench.metrics.mechanism import MechanismTelemetry
from capsbench.metrics.system import synchronize
from capsbench.train.signals import StopFlag


@dataclass
class Trainer:
    """What one step needs. ``train_model`` may be a compiled wrapper of ``model``."""

    model: nn.Module
    train_model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    grad_clip: float | None = None
    grad_norms: GradNorms | None = None
    stop: StopFlag = field(default_factory=StopFlag)
    step: int = 0  # global step, kept across epochs (and checkpoints)
    check_every: int = 10

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


@dataclass
class EpochResult:
    loss: float | None
    accuracy: float | None
    images: int
    seconds: float
    diverged: bool = False
    means: dict[str, np.ndarray] = field(default_factory=dict)  # eval only: eq. 12 per layer
    summary: dict = field(default_factory=dict)  # eval only: eq. 13, see metrics.activations.dead_summary
    mechanism: dict = field(default_factory=dict)  # eval with mechanism=True: see metrics.mechanism


def train_epoch(
    t: Trainer, loader, *, epoch: int, epochs: int, steps: int, advance: Callable = lambda loss=None: None
) -> EpochResult:
    """Train on at most ``steps`` batches; stops early (``diverged=True``) on a non-finite loss."""
    t.model.train()
    acc = Accuracy(t.device)
    finite = torch.ones((), dtype=torch.bool, device=t.device)
    start = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i >= steps:
            break
        x = x.to(t.device, non_blocking=True)
        y = y.to(t.device, non_blocking=True)
        progress = ((epoch - 1) * steps + i) / (epochs * steps)  # fraction of training done before this step
        loss, out = _step(t, x, y, progress)
        acc.update(out, y, loss)
        finite &= torch.isfinite(loss.detach())
        t.step += 1
        shown = None
        if (i + 1) % t.check_every == 0 or i + 1 == steps:
            if not bool(finite):
                synchronize(t.device)
                return EpochResult(None, None, acc.count, time.perf_counter() - start, diverged=True)
            shown = float(loss)
        advance(loss=shown)
        t.stop.check()
    if not bool(finite):
        return EpochResult(None, None, acc.count, time.perf_counter() - start, diverged=True)
    synchronize(t.device)
    seconds = time.perf_counter() - start
    m = acc.compute()
    return EpochResult(m["loss"], m["accuracy"], acc.count, seconds)


def _step(t: Trainer, x: torch.Tensor, y: torch.Tensor, progress: float) -> tuple[torch.Tensor, torch.Tensor]:
    sample = t.grad_norms is not None and t.grad_norms.due(t.step)
    # Sampled steps run the eager model: hooks and torch.compile do not mix.
    net = t.model if sample else t.train_model
    t.optimizer.zero_grad(set_to_none=True)
    with t.grad_norms.watch() if sample else nullcontext():
        with t.autocast():
            out = net(x)
        loss = t.loss_fn(out.float(), y, progress)
        (t.scaler.scale(loss) if t.scaler is not None else loss).backward()
    if t.scaler is not None and (sample or t.grad_clip is not None):
        t.scaler.unscale_(t.optimizer)
    if sample:
        t.grad_norms.collect(grad_scale=t.scaler.get_scale() if t.scaler is not None else 1.0)
    if t.grad_clip is not None:
        nn.utils.clip_grad_norm_(t.model.parameters(), t.grad_clip)
    if t.scaler is not None:
        t.scaler.step(t.optimizer)
        t.scaler.update()
    else:
        t.optimizer.step()
    return loss.detach(), out.detach()


@torch.no_grad()
def evaluate(
    t: Trainer, loader, *, progress: float, threshold: float = 0.01, mechanism: bool = False
) -> EpochResult:
    """Loss, accuracy and the eq. 12 mean activations over the whole loader (eager model, eval mode).

    ``mechanism``: also collect the mechanism telemetry (``capsbench.metrics.mechanism``).
    """
    t.model.eval()
    acc = Accuracy(t.device)
    start = time.perf_counter()
    mech = MechanismTelemetry(t.model, threshold) if mechanism else None
    with CapsuleActivations(t.model, threshold) as acts, mech or nullcontext():
        for x, y in loader:
            x = x.to(t.device, non_blocking=True)
            y = y.to(t.device, non_blocking=True)
            with t.autocast():
                out = t.model(x)
            acc.update(out, y, t.loss_fn(out.float(), y, progress))
            t.stop.check()
    m = acc.compute()
    means, summary = acts.means(), acts.summary()
    mechanism_summary = mech.summary() if mech is not None else {}
    seconds = time.perf_counter() - start
    diverged = m["loss"] is not None and not np.isfinite(m["loss"])
    return EpochResult(m["loss"], m["accuracy"], acc.count, seconds, diverged, means, summary, mechanism_summary)
