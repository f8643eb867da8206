"""What a run has measured so far, and the files derived from it.

``RunState`` goes into every checkpoint; ``metrics.jsonl`` and ``activations.npz``
are rewritten from it after every epoch (and on resume), so they always agree
with the checkpoint they belong to.

Example::

    state = RunState()
    state.add_epoch({"epoch": 1, "val_accuracy": 0.5, ...}, {"val/epoch001/conv1": means})
    state.write_outputs(run_dir)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from capsbench.io import atomic_write, write_text
from capsbench.results.run_record import finite


@dataclass
class RunState:
    epoch: int = 0  # completed epochs
    step: int = 0  # global training step
    history: list = field(default_factory=list)  # one metrics.jsonl line per epoch
    activations: dict = field(default_factory=dict)  # "val/epoch003/conv2" -> float64 array [types]
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    val_summary: dict | None = None  # dead_summary of the last validation epoch
    grad_norms: dict = field(default_factory=dict)  # last sample
    train_images: int = 0
    train_seconds: float = 0.0
    epoch_seconds: float = 0.0
    wall_s: float = 0.0
    peak_memory_mb: float = 0.0
    resumes: list = field(default_factory=list)  # epochs this run was resumed from

    def add_epoch(self, line: dict, arrays: dict[str, np.ndarray]) -> None:
        self.history.append(finite(line))
        self.activations.update({k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})
        self.epoch = line["epoch"]
        acc = line.get("val_accuracy")
        if acc is not None and (self.best_val_accuracy is None or acc > self.best_val_accuracy):
            self.best_val_accuracy, self.best_epoch = acc, line["epoch"]

    def to_checkpoint(self) -> dict:
        """Plain types and tensors only (``torch.load(weights_only=True)`` reads them back)."""
        d = asdict(self)
        d["activations"] = {k: torch.from_numpy(np.array(v)) for k, v in self.activations.items()}
        return d

    @classmethod
    def from_checkpoint(cls, d: dict) -> RunState:
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in d.items() if k in known})
        state.activations = {k: v.numpy() for k, v in state.activations.items()}
        return state

    def write_outputs(self, run_dir: Path) -> None:
        lines = "".join(json.dumps(h, sort_keys=True, allow_nan=False) + "\n" for h in self.history)
        write_text(run_dir / "metrics.jsonl", lines)
        arrays = dict(self.activations)
        atomic_write(run_dir / "activations.npz", lambda f: np.savez(f, **arrays), mode="wb")
