"""Top-1 accuracy and mean loss over an epoch, accumulated without a host sync per batch.

Example::

    acc = Accuracy(device="cpu")
    acc.update(torch.tensor([[0.9, 0.1], [0.2, 0.7]]), torch.tensor([0, 0]), loss=torch.tensor(0.3))
    acc.compute()   # {'accuracy': 0.5, 'loss': 0.3, 'count': 2}
"""

from __future__ import annotations

import torch


class Accuracy:
    """Fraction of samples whose highest class activation is the target (in [0, 1])."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        self._correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self._loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self._count = 0  # a Python int: batch sizes are known on the host, no sync

    def update(self, scores: torch.Tensor, target: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        """Add one batch; ``loss`` is the batch mean, weighted here by the batch size."""
        n = target.shape[0]
        self._correct += (scores.detach().argmax(dim=1) == target).sum()
        if loss is not None:
            self._loss += loss.detach().to(torch.float64) * n
        self._count += n

    @property
    def count(self) -> int:
        return self._count

    def compute(self) -> dict:
        """One host sync: ``accuracy`` and ``loss`` (None when no sample was seen)."""
        if self._count == 0:
            return {"accuracy": None, "loss": None, "count": 0}
        return {
            "accuracy": self._correct.item() / self._count,
            "loss": self._loss.item() / self._count,
            "count": self._count,
        }
