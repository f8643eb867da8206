"""Seeding and RNG state capture, so a resumed run continues exactly where it stopped.

Example::

    seed_everything(0)
    state = rng_state()          # goes into the checkpoint (plain types and tensors only)
    set_rng_state(state)         # on resume
    epoch_generator(0, 3)        # the data-loader shuffle of epoch 3, independent of history
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator seeded from (seed, epoch): epoch ``e`` shuffles the same way whether or not the run resumed."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) % 2**63)


def rng_state() -> dict:
    """Every global RNG state, as types ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {**np_state, "state": {"key": np_state["state"]["key"].tolist(), "pos": np_state["state"]["pos"]}},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32), "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
