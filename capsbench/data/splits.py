"""Deterministic stratified subsets and validation splits.

The order of the images inside each class comes from a keyed integer hash of the image
index (splitmix64), not from a random number generator, so the same ``split_seed`` picks
the same images on every machine and with every numpy or torch version.

Counts are spread over the classes in proportion to their sizes with the largest-remainder
rule, so a subset of ``k`` images has exactly ``k`` images and every class gets the floor or
the ceiling of its share.

Example::

    >>> labels = np.array([0, 0, 0, 0, 1, 1])
    >>> allocate(np.array([4, 2]), 3).tolist()
    [2, 1]
    >>> train, val = split_train(labels, subset=None, val_size=2, seed=0)
    >>> len(train), len(val)
    (4, 2)
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from capsbench.errors import UserError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def hash_keys(indices: np.ndarray, seed: int, stream: str) -> np.ndarray:
    """One pseudo-random uint64 per index; distinct indices get distinct keys (a bijection)."""
    salt = int.from_bytes(hashlib.blake2b(f"{seed}:{stream}".encode(), digest_size=8).digest(), "little")
    x = np.asarray(indices, dtype=np.uint64) + np.uint64(salt)  # wraps modulo 2**64: still one-to-one
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Spread ``total`` over classes in proportion to ``counts``: exact sum, each within floor/ceil of its share.

    Integer arithmetic throughout (no float ties); leftover units go to the largest remainders,
    ties to the lower class index.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if not 0 <= total <= n:
        raise ValueError(f"cannot take {total} of {n} items")
    if n == 0:
        return counts.copy()
    base = counts * total // n
    remainder = counts * total % n
    left = total - int(base.sum())
    order = np.lexsort((np.arange(len(counts)), -remainder))  # last key sorts first
    base[order[:left]] += 1
    return base


def class_orders(labels: np.ndarray, seed: int, stream: str) -> list[np.ndarray]:
    """Per class (ascending label), its indices in hash order."""
    labels = np.asarray(labels)
    keys = hash_keys(np.arange(len(labels)), seed, stream)
    orders = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        orders.append(idx[np.argsort(keys[idx], kind="stable")])
    return orders


def check_count(value, name: str, available: int, dataset: str) -> int | None:
    """Validate a ``subset``-like count: None, or an integer in [1, available]."""
    if value is None:
        return None
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < 1:
        raise UserError(f"data.{name}: expected a positive whole number of images or null, got {value!r}")
    if int(value) > available:
        raise UserError(
            f"data.{name}={int(value)} is more than the {available} images {dataset} has there; "
            f"lower it or set it to null"
        )
    return int(value)


def val_count(val_size, available: int) -> int:
    """``val_size`` as a count: a fraction (< 1) of ``available`` rounded half up, or a whole count (>= 1)."""
    if isinstance(val_size, bool) or val_size is None or not math.isfinite(float(val_size)) or val_size < 0:
        raise UserError(f"data.val_size: expected a fraction in [0, 1) or a whole count >= 1, got {val_size!r}")
    if val_size < 1:
        count = math.floor(float(val_size) * available + 0.5)
    elif float(val_size).is_integer():
        count = int(val_size)
    else:
        raise UserError(f"data.val_size: a count (>= 1) must be a whole number, got {val_size!r}")
    if count >= available:
        raise UserError(
            f"data.val_size={val_size!r} leaves no training images ({count} of {available} for validation); "
            "use a smaller fraction or count"
        )
    return count


def stratified_subset(labels: np.ndarray, size: int | None, seed: int, stream: str) -> np.ndarray:
    """Indices (ascending) of a stratified subset of ``size`` images; all of them when ``size`` is None."""
    labels = np.asarray(labels)
    if size is None:
        return np.arange(len(labels))
    orders = class_orders(labels, seed, stream)
    take = allocate(np.array([len(o) for o in orders]), size)
    picked = [o[:k] for o, k in zip(orders, take)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def split_train(labels: np.ndarray, subset: int | None, val_size, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: keep ``subset`` images (stratified), then carve ``val_size`` of them out.

    Within each class the kept images are the first of its hash order and validation takes the
    first of those, so the two sets are disjoint by construction.
    """
    labels = np.asarray(labels)
    orders = class_orders(labels, seed, "train")
    counts = np.array([len(o) for o in orders], dtype=np.int64)
    kept = counts if subset is None else allocate(counts, subset)
    n_val = val_count(val_size, int(kept.sum()))
    per_class_val = allocate(kept, n_val)
    train = [o[v:k] for o, v, k in zip(orders, per_class_val, kept)]
    val = [o[:v] for o, v in zip(orders, per_class_val)]
    empty = np.zeros(0, dtype=np.int64)
    return (
        np.sort(np.concatenate(train)) if train else empty,
        np.sort(np.concatenate(val)) if val else empty,
    )
