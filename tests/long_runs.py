"""Synthetic long-cpu run folders with known answers (record.json, activations.npz, metrics.jsonl).

Example::

    run = write_long_run(tmp_path, routing="em", depth=2, seed=0,
                         acts={"conv1": [[0.3, 0.3, 0.3, 0.3]] * 3 + [[0.3, 0.3, 0.3, 0.005]]})
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from capsbench.results.run_record import write_record
from capsbench.results.testing import fake_run_record

TYPES = 4
EPOCHS = 4
BASE_MECH = {"activation_percentiles": {"p50": 0.3}, "coefficient_entropy": 0.8, "coefficient_cv_images": 0.1,
             "terms": None}


def write_long_run(root: Path, *, routing: str = "self", depth: int = 2, seed: int = 0, accuracy: float = 0.9,
                   options: dict | None = None, pose_norm: bool | None = None, acts: dict | None = None,
                   mech: dict | None = None, dead: list[int] | None = None, epochs_done: int | None = None,
                   name: str | None = None, grads: dict | None = None, arch: str = "capsnet",
                   extra: dict | None = None) -> Path:
    """A run folder; ``acts[layer]``: per epoch, the per-type mean activations (default 0.3 everywhere);
    ``mech[epoch][layer]``: fields that replace ``BASE_MECH``'s; ``epochs_done`` < EPOCHS: unfinished (no record);
    ``grads[epoch]``: that epoch's ``grad_norms`` (none by default); ``extra``: more dotted config keys."""
    extra = {"model.routing_options": dict(options or {}), "train.epochs": EPOCHS, **(extra or {})}
    if pose_norm is not None:
        extra["model.pose_norm"] = pose_norm
    record = fake_run_record(routing=routing, arch=arch, depth=depth, seed=seed, accuracy=accuracy, types=TYPES,
                             protocol="long-cpu", epochs=EPOCHS, dead=dead, extra_config=extra)
    tag = "-".join(f"{k}{v}" for k, v in sorted((options or {}).items())) + ("-nopn" if pose_norm is False else "")
    path = Path(root) / (name or f"{routing}{'-' + tag if tag else ''}-depth{depth}-seed{seed}")
    path.mkdir(parents=True)
    layers = ["primary", *[f"conv{i}" for i in range(1, depth + 1)], "class"]
    acts = acts or {}
    done = EPOCHS if epochs_done is None else epochs_done
    arrays, lines = {}, []
    for e in range(1, done + 1):
        for layer in layers:
            series = acts.get(layer) or [[0.3] * TYPES] * EPOCHS
            arrays[f"val/epoch{e:03d}/{layer}"] = np.array(series[e - 1], dtype=np.float64)
        entries = {layer: {**BASE_MECH, **((mech or {}).get(e, {}).get(layer) or {})} for layer in layers}
        line = {"epoch": e, "val_accuracy": accuracy, "mechanism": entries}
        lines.append(json.dumps({**line, "grad_norms": grads[e]} if grads and e in grads else line))
    np.savez(path / "activations.npz", **arrays)
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if done < EPOCHS:
        (path / "config.yaml").write_text(yaml.safe_dump(record["config"]))
    else:
        write_record(path / "record.json", record)
    return path


def dying_series(death_epoch: int, born: float = 0.3, dead: float = 0.005) -> list[float]:
    """One type's A(e) over EPOCHS epochs: ``born`` until ``death_epoch``, ``dead`` from it on."""
    return [born if e < death_epoch else dead for e in range(1, EPOCHS + 1)]


def layer_series(*types: list[float]) -> list[list[float]]:
    """Per-epoch lists of per-type values from per-type series (padded with 0.3-everywhere types)."""
    cols = list(types) + [[0.3] * EPOCHS] * (TYPES - len(types))
    return [[col[e] for col in cols] for e in range(EPOCHS)]
