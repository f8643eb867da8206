"""The end-of-epoch checkpoint: everything needed to continue a run bit-for-bit.

Contents: ``format``, ``spec_hash``, ``seed``, ``epoch`` (completed epochs),
``model``, ``optimizer``, ``scheduler``, ``scaler`` state dicts, ``rng`` (python,
numpy, torch, cuda), ``telemetry`` (history, activations, best epoch, ...) and
``digest``: a sha256 over all of it. The zip container torch writes does not
notice a flipped byte inside tensor data, so the digest is what detects that.
Loaded with ``weights_only=True``: a checkpoint is data, never code. It stays a
plain dict, so ``torch.load(path)["model"]`` gives the weights.

Example::

    save_checkpoint(run_dir / "checkpoint.pt", {...})
    ckpt, why = load_checkpoint(run_dir / "checkpoint.pt", spec_hash="ab12", seed=0)   # (None, why) if unusable
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from capsbench.io import atomic_write

FORMAT = 1
REQUIRED = ("format", "spec_hash", "seed", "epoch", "model", "optimizer", "scheduler", "rng", "telemetry", "digest")


def digest(obj) -> str:
    """sha256 of a nested structure of dicts, lists, tuples, tensors and scalars (order-sensitive)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, list | tuple):
        h.update(f"L{len(obj)}".encode())
        for value in obj:
            _feed(h, value)
    else:
        h.update(repr((type(obj).__name__, obj)).encode())


def save_checkpoint(path: str | Path, state: dict) -> None:
    state = {"format": FORMAT, **state}
    state["digest"] = digest(state)
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")


def load_checkpoint(path: str | Path, *, spec_hash: str, seed: int) -> tuple[dict | None, str]:
    """``(checkpoint, "")`` when intact and made for this run, else ``(None, why)``."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, flipped bytes: all mean "unusable"
        return None, f"cannot be read ({type(exc).__name__})"
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in REQUIRED) or ckpt["format"] != FORMAT:
        return None, "is not a capsbench checkpoint of this format"
    if digest({k: v for k, v in ckpt.items() if k != "digest"}) != ckpt["digest"]:
        return None, "is corrupt (digest mismatch)"
    if ckpt["spec_hash"] != spec_hash or ckpt["seed"] != seed:
        return None, f"belongs to another run (spec {ckpt['spec_hash']}, seed {ckpt['seed']})"
    return ckpt, ""
