"""Per-channel mean and standard deviation of the training split, computed once and cached.

The paper normalises with the training-set mean and std and nothing else. Statistics are
taken over the final training split (after ``subset`` and the validation carve-out), at the
final image size, on pixels scaled to [0, 1], accumulated in float64.

The cache is one small JSON file per key under ``<cache_dir>/stats/`` (see ``paths.cache_dir``),
written atomically; the key holds everything that changes the training pixels.

Example::

    >>> x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)  # one image, one channel, 1x2
    >>> channel_stats([x])
    ((0.5,), (0.5,))
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from capsbench.io import write_json

from .paths import cache_dir

VERSION = 1  # bump when the way statistics are computed changes
MIN_STD = 1e-6  # a constant channel gets std 1 instead of a division by ~0


def channel_stats(batches: Iterable[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and (population) std per channel over uint8 batches ``[n, C, H, W]``, in [0, 1] units."""
    total = sq = None
    count = 0
    for x in batches:
        if x.shape[0] == 0:
            continue
        x = x.to(torch.float64).div_(255.0)
        s = x.sum(dim=(0, 2, 3))
        s2 = x.square_().sum(dim=(0, 2, 3))
        total, sq = (s, s2) if total is None else (total + s, sq + s2)
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        raise ValueError("cannot compute statistics of an empty training split")
    mean = total / count
    var = (sq / count - mean.square()).clamp_(min=0.0)
    std = var.sqrt()
    std = torch.where(std < MIN_STD, torch.ones_like(std), std)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def stats_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return cache_dir() / "stats" / f"{key.get('dataset', 'data')}-{digest}.json"


def cached_stats(key: dict, compute: Callable[[], tuple]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Statistics for ``key`` from the cache, else ``compute()`` and store them (best effort)."""
    key = {**key, "version": VERSION}
    path = stats_path(key)
    loaded = _load(path, key)
    if loaded is not None:
        return loaded
    mean, std = compute()
    try:
        write_json(path, {"key": json.loads(json.dumps(key, default=str)), "mean": list(mean), "std": list(std)})
    except OSError as exc:  # a read-only cache only costs a recomputation next time
        warnings.warn(f"could not cache normalisation statistics at {path}: {exc}", stacklevel=2)
    return mean, std


def _load(path: Path, key: dict):
    try:
        record = json.loads(path.read_text())
        mean, std = record["mean"], record["std"]
        if record["key"] != json.loads(json.dumps(key, default=str)) or len(mean) != len(std) or not mean:
            return None
        if not all(isinstance(v, float) and math.isfinite(v) for v in [*mean, *std]):
            return None
        return tuple(mean), tuple(std)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or damaged: recompute and overwrite
