"""Crafted, valid run records for tests and examples (no training involved).

Example::

    run_dir = write_fake_run(tmp_path / "em-d3-s0", routing="em", depth=3, seed=0, accuracy=0.42, dead=[2, 5, 16])
    capsbench leaderboard add <tmp_path>      # works like a real run directory
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from capsbench.results.run_record import seal, write_record


def fake_run_record(
    *,
    routing: str = "em",
    arch: str = "capsnet",
    depth: int = 1,
    seed: int = 0,
    accuracy: float | None = 0.9,
    dead: list[int] | None = None,
    types: int = 16,
    num_classes: int = 10,
    dataset: str = "digits",
    status: str = "ok",
    protocol: str = "test",
    protocol_version: str = "1",
    epochs: int = 2,
    residual: bool = False,
    extra_config: dict | None = None,
) -> dict:
    """A sealed run record; ``dead``: dead types per ConvCaps layer (default none dead, ``depth`` layers)."""
    dead = [0] * depth if dead is None else list(dead)
    config = {
        "name": "fake", "description": "", "protocol": protocol, "protocol_version": protocol_version, "seed": seed,
        "device": "cpu", "deterministic": True,
        "model": {"arch": arch, "routing": routing, "backbone": "tiny", "depth": depth, "capsule_types": types,
                  "residual": residual, "checkpointing": False, "options": {}, "routing_options": {}},
        "data": {"name": dataset, "image_size": 16, "subset": None, "val_size": 0.1, "test_subset": None,
                 "split_seed": 0, "normalize": True, "options": {}, "root": None},
        "train": {"epochs": epochs, "max_steps_per_epoch": None, "batch_size": 32},
        "metrics": {"dead_threshold": 0.01, "grad_norm_every": 50},
        "output": {"dir": "runs"}, "executor": {"name": "local"},
    }
    for dotted, value in (extra_config or {}).items():
        node = config
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    spec_hash = hashlib.sha256(json.dumps({k: v for k, v in config.items() if k != "seed"},
                                          sort_keys=True).encode()).hexdigest()
    capsule = arch == "capsnet"
    layers = {}
    order = []
    if capsule:
        layers["primary"] = _layer("primary", types, 0)
        order.append("primary")
        for i, n_dead in enumerate(dead, start=1):
            layers[f"conv{i}"] = _layer("conv", types, n_dead)
            order.append(f"conv{i}")
        layers["class"] = _layer("class", num_classes, 0)
        order.append("class")
    conv = [v["dead_count"] for v in layers.values() if v["kind"] == "conv"]
    finished = status == "ok"
    record = {
        "schema_version": 1, "spec": "fake", "spec_hash": spec_hash, "run_id": f"depth{depth}-seed{seed}",
        "seed": seed, "protocol": protocol, "protocol_version": protocol_version, "config": config,
        "status": status, "error": None if finished else f"{status} for the test",
        "diverged_epoch": 2 if status == "diverged" else None, "loss": "spread",
        "metrics": {
            "test_accuracy": accuracy if finished else None, "test_loss": 0.5 if finished else None,
            "avg_dead_conv": (sum(conv) / len(conv) if conv else None) if finished else None,
            "val_accuracy": accuracy, "val_loss": 0.5, "val_avg_dead_conv": None,
            "train_accuracy": accuracy, "train_loss": 0.4, "best_val_accuracy": accuracy, "best_epoch": 1,
            "final_epoch": epochs, "layer_order": order,
            "layers": {"test": layers if finished else {}, "val": layers},
            "grad_norms": {name: {"weight": 0.1} for name in order},
        },
        "timings": {"images_per_s": 100.0, "epoch_s": 1.0, "wall_s": 2.0},
        "peak_memory_mb": 10.0, "num_params": 1000, "resumes": [],
        "environment": {"capsbench": "0.1.0", "git_commit": "unknown", "python": "3.11", "torch": "2.14.1",
                        "cuda": None, "device": "cpu"},
    }
    return seal(record)


def _layer(kind: str, types: int, dead: int) -> dict:
    values = [0.0] * dead + [0.3] * (types - dead)
    return {"kind": kind, "dead_count": dead, "dead_fraction": dead / types,
            "mean_activation": sum(values) / types, "types": values}


def write_fake_run(run_dir: str | Path, **kwargs) -> Path:
    """A run directory holding only ``record.json`` (what ``leaderboard add`` reads)."""
    run_dir = Path(run_dir)
    write_record(run_dir / "record.json", fake_run_record(**kwargs))
    return run_dir
