"""Capsule activations over an eval epoch (paper eq. 12) and dead capsules (eq. 13).

Eq. 12: ``A_i`` is the mean activation of capsule type ``i`` over every image and
every spatial position seen during the epoch. We accumulate the sum and the count
per type, so the mean weights every (image, position) equally; when all batches
have the same size this equals the paper's mean over batches, and a smaller last
batch does not get extra weight.

Eq. 13: a type is dead when ``A_i <= threshold`` (0.01 in the paper), inclusive.
Inclusive is taken at the precision the activations were stored in: float32(0.3)
is a little above 0.3, and a capsule sitting exactly at float32(0.3) counts as dead
with threshold 0.3 (the threshold is rounded up to the activations' dtype when that
rounding goes up; float32(0.01) is below 0.01, so 0.01 is unchanged).

Example::

    with CapsuleActivations(model) as acts:     # forward hooks on every capsule layer
        for x, _ in val_loader:
            model(x)
    means = acts.means()                        # {"primary": array([...]), "conv1": ...}
    summary = dead_summary(means, acts.kinds, threshold=0.01)
    summary["avg_dead_conv"]                    # mean dead count over the ConvCaps layers
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from capsbench.metrics.layers import capsule_layers


class CapsuleActivations:
    """Accumulate per-type activation sums of every capsule layer while active (a context manager).

    Sums stay on the device in float64 (no host sync per batch); ``means()`` syncs once.
    """

    def __init__(self, model: nn.Module, threshold: float = 0.01):
        self.layers = capsule_layers(model)
        self.kinds = {layer.name: layer.kind for layer in self.layers}
        self.threshold = threshold
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self._handles: list = []

    def __enter__(self) -> CapsuleActivations:
        self._handles = [layer.module.register_forward_hook(self._hook(layer.name)) for layer in self.layers]
        return self

    def __exit__(self, *exc) -> bool:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return False

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.add(name, _activation_of(output))

        return hook

    def add(self, name: str, activation: torch.Tensor) -> None:
        """Add one batch of activations ``[N, T, *spatial]`` (or ``[N, T]``) of layer ``name``."""
        a = activation.detach()
        if a.dim() < 2:
            raise ValueError(f"capsule layer '{name}' gave activations of shape {tuple(a.shape)}; expected [N, T, ...]")
        dims = [0, *range(2, a.dim())]
        total = a.to(torch.float64).sum(dim=dims)
        self._sums[name] = self._sums[name] + total if name in self._sums else total
        self._counts[name] = self._counts.get(name, 0) + a.numel() // a.shape[1]
        self.dtypes[name] = a.dtype

    def means(self) -> dict[str, np.ndarray]:
        """``A_i`` per layer (float64 arrays of length T); layers never reached are left out."""
        return {name: (self._sums[name] / self._counts[name]).cpu().numpy() for name in self._sums}

    def summary(self) -> dict:
        return dead_summary(self.means(), self.kinds, self.threshold, self.dtypes)


def _activation_of(output) -> torch.Tensor:
    """The activation tensor of a layer output: ``Capsules.activation`` or the second tuple item."""
    if hasattr(output, "activation"):
        return output.activation
    if isinstance(output, tuple | list) and len(output) >= 2:
        return output[1]
    raise TypeError(f"cannot find capsule activations in a layer output of type {type(output).__name__}")


def dead_limit(threshold: float, dtype: torch.dtype = torch.float32) -> float:
    """The largest A_i that counts as dead: ``threshold``, or its rounding to ``dtype`` when that is above it."""
    if not dtype.is_floating_point:
        return float(threshold)
    return max(float(threshold), float(torch.tensor(threshold, dtype=torch.float64).to(dtype)))


def dead_summary(
    means: dict[str, np.ndarray],
    kinds: dict[str, str],
    threshold: float = 0.01,
    dtypes: dict[str, torch.dtype] | None = None,
) -> dict:
    """Per-layer dead counts (eq. 13) and the network-level average over ConvCaps layers.

    Returns ``{"layers": {name: {kind, dead_count, dead_fraction, mean_activation, types}},
    "avg_dead_conv": float | None, "dead_total": int}``; ``types`` lists every ``A_i``.
    ``avg_dead_conv`` is the paper's figure: the mean dead count over the stacked
    ConvCaps layers (``kind == "conv"``), None when there are none. ``dtypes``: the
    dtype each layer's activations came in (default float32), see :func:`dead_limit`.
    """
    layers = {}
    for name, a in means.items():
        a = np.asarray(a, dtype=np.float64)
        limit = dead_limit(threshold, (dtypes or {}).get(name, torch.float32))
        dead = int(np.count_nonzero(a <= limit))
        layers[name] = {
            "kind": kinds.get(name, "other"),
            "dead_count": dead,
            "dead_fraction": dead / a.size if a.size else None,
            "mean_activation": float(a.mean()) if a.size else None,
            "types": [float(v) for v in a],
        }
    conv = [v["dead_count"] for v in layers.values() if v["kind"] == "conv"]
    return {
        "layers": layers,
        "avg_dead_conv": float(np.mean(conv)) if conv else None,
        "dead_total": sum(v["dead_count"] for v in layers.values()),
    }
