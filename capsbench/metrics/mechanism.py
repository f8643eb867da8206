"""Mechanism telemetry: why a capsule layer's activations are what they are, per layer and epoch.

Collected on validation batches only, through forward hooks (like ``CapsuleActivations``),
with cheap reductions accumulated on the device; nothing is kept per image. Per capsule layer:

- ``activation_percentiles``: percentiles 1, 5, 25, 50, 75, 95, 99 of every (image, type,
  position) activation, from a 1,000-bin histogram on [0, 1] (resolution 1e-3, linear inside a
  bin); ``activation_at_most_threshold``: the exact fraction of those values <= the dead
  threshold (eq. 13's threshold applied to single activations, not to type means);
- ``dead_unit_fraction``: the fraction of (type, position) units whose mean activation over the
  validation images is <= the threshold (eq. 13 per unit rather than per type);
- ``pose_norm``: mean and standard deviation of the Euclidean norm of the output poses;
- ``coefficient_entropy``: the entropy of each child's routing coefficients over the ``J``
  parent types at one position (renormalised over them when the method normalises over every
  receiving parent), divided by its maximum ``ln J``, averaged over children, positions and
  images: 1 = uniform coupling, 0 = each child feeds one parent;
- ``coefficient_cv_images``: does routing depend on the input? For every (position, child,
  parent) the standard deviation of the coefficient across the validation images, averaged,
  divided by the mean coefficient; 0 = the same coupling for every image;
- ``terms``: per-type means of the routing's activation terms when it reports them
  (``Routing.last_terms``: EM's ``beta_a``, ``cost``, ``mass``, ``margin``, ``lambda_t``; VB's
  ``entropy``, ``weight``, ``cost``, logits before and after its BatchNorm), each a list over
  types, so a figure can say which term pushed a type down.

Works on any routing path: it reads the layer output (``Capsules``), ``layer.last_coefficients``
(``None`` -> coefficient fields are None) and ``layer.routing.last_terms`` (set only while
``routing.diagnostics`` is True, which this class switches on and off around the epoch).

Example::

    with MechanismTelemetry(model, threshold=0.01) as mech:
        for x, _ in val_loader:
            model(x)
    mech.summary()["conv3"]["activation_percentiles"]["p50"]
"""

from __future__ import annotations

import math

import torch
from torch import nn

from capsbench.metrics.activations import _activation_of, dead_limit
from capsbench.metrics.layers import capsule_layers

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
BINS = 1000


class _LayerStats:
    """Running sums of one layer (float64 on the layer's device)."""

    def __init__(self) -> None:
        self.hist: torch.Tensor | None = None  # [BINS] counts of activations
        self.low = 0.0  # activations <= threshold (a device scalar once seen)
        self.values = 0  # activations seen
        self.unit_sum: torch.Tensor | None = None  # [T, H, W] sum over images
        self.images = 0
        self.norm_sum = self.norm_sq = 0.0  # device scalars once seen
        self.norms = 0
        self.entropy_sum = 0.0
        self.entropy_count = 0
        self.coef_sum: torch.Tensor | None = None  # [L, I, J] sum over images
        self.coef_sq: torch.Tensor | None = None
        self.coef_images = 0
        self.terms: dict[str, torch.Tensor] = {}  # name -> sum of (per-type mean * count)
        self.terms_count = 0.0

    def add_activation(self, a: torch.Tensor, limit: float) -> None:
        a = a.detach().float()
        idx = (a * BINS).long().clamp_(0, BINS - 1).flatten()
        counts = torch.bincount(idx, minlength=BINS).to(torch.float64)  # deterministic without weights
        self.hist = counts if self.hist is None else self.hist + counts
        self.low = self.low + (a <= limit).sum().to(torch.float64)
        self.values += a.numel()
        units = a.to(torch.float64).sum(0)
        self.unit_sum = units if self.unit_sum is None else self.unit_sum + units
        self.images += a.shape[0]

    def add_pose(self, pose: torch.Tensor) -> None:
        norm = torch.linalg.vector_norm(pose.detach().float(), dim=2).to(torch.float64)  # [N, T, H, W]
        self.norm_sum = self.norm_sum + norm.sum()
        self.norm_sq = self.norm_sq + norm.square().sum()
        self.norms += norm.numel()

    def add_coefficients(self, c: torch.Tensor) -> None:
        c = c.detach().float()  # [N, L, I, J]
        j = c.shape[-1]
        if j > 1:
            p = c / c.sum(-1, keepdim=True).clamp_min(1e-30)
            entropy = -torch.special.xlogy(p, p).sum(-1) / math.log(j)
            self.entropy_sum = self.entropy_sum + entropy.to(torch.float64).sum()
            self.entropy_count += entropy.numel()
        c64 = c.to(torch.float64)
        s, sq = c64.sum(0), c64.square().sum(0)
        if self.coef_sum is None or self.coef_sum.shape != s.shape:
            self.coef_sum, self.coef_sq, self.coef_images = s, sq, 0
        else:
            self.coef_sum, self.coef_sq = self.coef_sum + s, self.coef_sq + sq
        self.coef_images += c.shape[0]

    def add_terms(self, terms: dict[str, torch.Tensor]) -> None:
        count = float(terms["count"])
        for name, value in terms.items():
            if name != "count":
                weighted = value.detach().to(torch.float64) * count
                self.terms[name] = self.terms[name] + weighted if name in self.terms else weighted
        self.terms_count += count

    def summary(self, limit: float) -> dict:
        """The layer's entry; ``limit``: the largest mean activation of a dead unit."""
        out: dict = {
            "activation_percentiles": _percentiles(self.hist) if self.hist is not None else None,
            "activation_at_most_threshold": float(self.low) / self.values if self.values else None,
            "dead_unit_fraction": None,
            "pose_norm": None,
            "coefficient_entropy": float(self.entropy_sum) / self.entropy_count if self.entropy_count else None,
            "coefficient_cv_images": None,
            "terms": None,
        }
        if self.unit_sum is not None:
            out["dead_unit_fraction"] = float((self.unit_sum / self.images <= limit).double().mean())
        if self.norms:
            mean = float(self.norm_sum) / self.norms
            var = max(float(self.norm_sq) / self.norms - mean * mean, 0.0)
            out["pose_norm"] = {"mean": mean, "std": math.sqrt(var)}
        if self.coef_sum is not None and self.coef_images:
            mean = self.coef_sum / self.coef_images
            std = (self.coef_sq / self.coef_images - mean.square()).clamp_min(0).sqrt()
            level = float(mean.mean())
            out["coefficient_cv_images"] = float(std.mean()) / level if level > 0 else None
        if self.terms_count:
            out["terms"] = {k: _plain(v / self.terms_count) for k, v in sorted(self.terms.items())}
        return out


def _plain(t: torch.Tensor):
    return float(t) if t.dim() == 0 else [float(v) for v in t.flatten()]


def _percentiles(hist: torch.Tensor) -> dict[str, float]:
    """Percentiles from bin counts on [0, 1], linear inside the bin that crosses each level."""
    counts = hist.cpu().to(torch.float64)
    total = float(counts.sum())
    cum = torch.cumsum(counts, 0)
    out = {}
    for q in PERCENTILES:
        target = q / 100 * total
        k = int(torch.searchsorted(cum, torch.tensor(target, dtype=torch.float64)).clamp(max=BINS - 1))
        before = float(cum[k - 1]) if k > 0 else 0.0
        inside = float(counts[k])
        frac = (target - before) / inside if inside > 0 else 0.0
        out[f"p{q}"] = min(1.0, (k + min(max(frac, 0.0), 1.0)) / BINS)
    return out


class MechanismTelemetry:
    """Forward hooks on every capsule layer; ``summary()`` gives the per-layer dict (one host sync)."""

    def __init__(self, model: nn.Module, threshold: float = 0.01):
        self.layers = capsule_layers(model)
        self.threshold = threshold
        self._stats: dict[str, _LayerStats] = {}
        self._handles: list = []
        self._routings = [
            r for layer in self.layers if isinstance(r := getattr(layer.module, "routing", None), nn.Module)
        ]

    def __enter__(self) -> MechanismTelemetry:
        self._handles = [layer.module.register_forward_hook(self._hook(layer.name)) for layer in self.layers]
        for routing in self._routings:
            routing.diagnostics, routing.last_terms = True, None
        return self

    def __exit__(self, *exc) -> bool:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for routing in self._routings:
            routing.diagnostics, routing.last_terms = False, None
        return False

    def _hook(self, name: str):
        def hook(module, inputs, output):
            stats = self._stats.setdefault(name, _LayerStats())
            activation = _activation_of(output)
            stats.add_activation(activation, dead_limit(self.threshold, activation.dtype))
            pose = getattr(output, "pose", None)
            if isinstance(pose, torch.Tensor) and pose.dim() == 5:
                stats.add_pose(pose)
            coefficients = getattr(module, "last_coefficients", None)
            if isinstance(coefficients, torch.Tensor) and coefficients.dim() == 4:
                stats.add_coefficients(coefficients)
            routing = getattr(module, "routing", None)
            terms = getattr(routing, "last_terms", None)
            if terms:
                stats.add_terms(terms)
                routing.last_terms = None  # one forward, one contribution

        return hook

    def summary(self) -> dict[str, dict]:
        """``{layer: {...}}`` in forward order, for the layers that ran (see the module docstring)."""
        limit = dead_limit(self.threshold, torch.float32)
        return {
            layer.name: self._stats[layer.name].summary(limit) for layer in self.layers if layer.name in self._stats
        }
