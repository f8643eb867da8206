"""What a run shows while it trains: progress bars, one line per epoch, warnings, TensorBoard.

Everything goes to stderr. ``quiet`` silences all but warnings; ``progress`` only
adds the per-epoch bar of training steps.

Example::

    display = Display(progress=True, quiet=False)
    with display.bar("epoch 1/10", total=200) as advance:
        for step in range(200):
            advance(loss=0.3)            # the loss is shown when given
    display.epoch_line({"epoch": 1, "train_loss": 0.3, ...})
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from capsbench.errors import UserError


class Display:
    def __init__(self, *, progress: bool = True, quiet: bool = False):
        self.quiet = quiet
        self.progress = progress and not quiet
        self._writer = None

    def open_tensorboard(self, log_dir: Path) -> None:
        """Also log every epoch's scalars to TensorBoard (needs the ``tensorboard`` extra)."""
        self._writer = _summary_writer(log_dir)

    def info(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)

    @contextmanager
    def bar(self, description: str, total: int):
        """Yield ``advance(loss=None)``; a no-op unless progress bars are on."""
        if not self.progress:
            yield lambda loss=None: None
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(description, total=total)

            def advance(loss: float | None = None) -> None:
                text = description if loss is None else f"{description} loss {loss:.4f}"
                bar.update(task, advance=1, description=text)

            yield advance

    def epoch_line(self, m: dict) -> None:
        parts = [f"epoch {m['epoch']}"]
        for key, label in (
            ("train_loss", "loss"),
            ("train_accuracy", "acc"),
            ("val_loss", "val_loss"),
            ("val_accuracy", "val_acc"),
            ("avg_dead_conv", "dead_conv"),
        ):
            if m.get(key) is not None:
                parts.append(f"{label} {m[key]:.4f}")
        if m.get("images_per_s"):
            parts.append(f"{m['images_per_s']:.0f} img/s")
        self.info("  ".join(parts))
        if self._writer is not None:
            for key, value in m.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key != "epoch":
                    self._writer.add_scalar(key, value, m["epoch"])
            for name, layer in (m.get("layers") or {}).items():
                self._writer.add_scalar(f"dead/{name}", layer["dead_count"], m["epoch"])
                if layer["mean_activation"] is not None:
                    self._writer.add_scalar(f"activation/{name}", layer["mean_activation"], m["epoch"])
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _summary_writer(log_dir: Path):
    try:  # lazily: TensorBoard is an optional extra
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "output.tensorboard: needs the tensorboard package; install it with "
            "`pip install 'capsbench[tensorboard]'` or set output.tensorboard=false"
        ) from None
    return SummaryWriter(log_dir=str(log_dir))
