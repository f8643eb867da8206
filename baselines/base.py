"""What every baseline model declares for the runner and the telemetry.

- ``reference_loss = "cross_entropy"``: the model returns logits, and capsbench's
  ``cross_entropy`` loss applies softmax cross-entropy to whatever the model returns
  (accuracy is the argmax either way).
- ``capsule_layers = []``: no capsule layers, so the activation telemetry (eq. 12/13) is
  n/a: the record's ``layers`` are empty and ``avg_dead_conv`` is null, never zeros.
- ``telemetry_blocks``: the ``depth`` blocks in forward order, each with ``name``
  (``block1`` ...) and ``kind`` (``"block"``), for per-block gradient norms. Everything
  else (stem, head) is what ``GradNorms`` calls ``backbone``.
"""

from __future__ import annotations

from torch import nn


class BaselineModel:
    """Mixin for ``nn.Module`` baselines; subclasses keep their blocks in ``self.blocks``."""

    reference_loss = "cross_entropy"
    family = "baseline"  # shown by reports next to capsule methods

    @property
    def capsule_layers(self) -> list[nn.Module]:
        return []

    @property
    def telemetry_blocks(self) -> list[nn.Module]:
        return list(self.blocks)

    @property
    def depth(self) -> int:
        return len(self.blocks)


def name_blocks(blocks: nn.Sequential) -> None:
    """``block1``, ``block2``, ... with kind ``block``: the names telemetry reports them under."""
    for i, block in enumerate(blocks, 1):
        block.name, block.kind = f"block{i}", "block"
