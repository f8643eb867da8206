"""Leaderboard records: the small, committed subset of a run record.

A leaderboard record keeps what the tables and figures need (test accuracy, per-layer
dead counts, fractions and mean activations, per-type means, gradient norms), the
resolved config, the environment and the status. Curves and per-epoch data stay in
the run directory.

Naming (contract):

- ``method``: ``<arch>-<routing>`` for capsule networks (``capsnet-em``), with
  ``-residual`` when ``model.residual`` is on (``capsnet-self-residual``); the arch
  name for anything else (``timm_resnet``), which is then a *baseline*;
- ``variant``: 12 hex digits of the sha256 of the config without seed, depth and the
  keys that do not change results. Records of one method on one data set are
  aggregated over seeds and depths only when their variant is equal;
- path: ``records/<protocol>/v<protocol_version>/<dataset>/<method>/<spec_hash[:12]>-s<seed>.json``.

Example::

    entry = to_entry(read_run_record("runs/quickstart/depth1-seed0-cedb70a6/record.json"))
    entry["method"], entry["depth"], entry["metrics"]["test_accuracy"]   # 'capsnet-self', 1, 0.969
    record_path(entry)        # records/quickstart/v1/digits/capsnet-self/cedb70a6a775-s0.json
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import PurePosixPath
from typing import Any

from capsbench.errors import UserError
from capsbench.results.schema import LEADERBOARD_RECORD_VERSION, check_leaderboard_record

# Classes of the built-in data sets, for records that do not say (models without class capsules).
KNOWN_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "smallnorb": 5, "imagewoof": 10}
FAILURES = ("diverged", "oom", "failed")  # every status but "ok"; counted and shown, never ranked
# Config keys left out of the variant: the swept axes, and switches that only trade memory or speed.
_NOT_VARIANT = ("seed", "model.depth", "model.checkpointing", "train.compile")
# Config keys dropped from the committed copy: machine-local paths and scheduling.
_NOT_COMMITTED = ("output", "executor", "data.root")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_capsule_arch(arch: str) -> bool:
    return arch == "capsnet" or "caps" in arch.lower()


def method_of(model: dict) -> tuple[str, bool]:
    """(method name, is a baseline) of a resolved ``model`` config section."""
    arch = str(model.get("arch"))
    if not is_capsule_arch(arch):
        return arch, True
    name = f"{arch}-{model.get('routing')}"
    return (name + "-residual" if model.get("residual") else name), False


def _drop(config: dict, dotted_keys) -> dict:
    config = copy.deepcopy(config)
    for dotted in dotted_keys:
        node = config
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return config


def variant_of(config: dict) -> str:
    from capsbench.config import NON_RESULT_KEYS, drop_hash_neutral_defaults

    # keys added later, at the value that reproduces earlier records, are no variant of their own
    kept = drop_hash_neutral_defaults(_drop(config, (*NON_RESULT_KEYS, *_NOT_VARIANT)))
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def num_classes_of(record: dict) -> int | None:
    """The record's ``num_classes``, else the size of its class capsule layer, else the known data set's."""
    if isinstance(record.get("num_classes"), int):
        return record["num_classes"]
    for split in ("test", "val"):
        for layer in (record["metrics"]["layers"].get(split) or {}).values():
            if layer.get("kind") == "class" and layer.get("types"):
                return len(layer["types"])
    return KNOWN_CLASSES.get(str(record["config"]["data"]["name"]))


def dead_fraction_conv(layers: dict) -> float | None:
    """Mean dead fraction over the stacked ConvCaps layers (kind ``conv``); None without any."""
    fractions = [v["dead_fraction"] for v in layers.values() if v.get("kind") == "conv"]
    fractions = [f for f in fractions if f is not None]
    return sum(fractions) / len(fractions) if fractions else None


def make_entry(record: dict) -> dict:
    """The leaderboard record of a (validated) run record, unchecked (reports use it for any run)."""
    config = record["config"]
    method, baseline = method_of(config["model"])
    m = record["metrics"]
    test_layers = m["layers"].get("test") or {}
    entry = {
        "schema_version": LEADERBOARD_RECORD_VERSION,
        "protocol": record["protocol"],
        "protocol_version": record["protocol_version"],
        "dataset": str(config["data"]["name"]),
        "num_classes": num_classes_of(record),
        "method": method,
        "baseline": baseline,
        "variant": variant_of(config),
        "arch": str(config["model"]["arch"]),
        "routing": None if baseline else config["model"].get("routing"),
        "depth": int(config["model"]["depth"]),
        "seed": record["seed"],
        "spec": record["spec"],
        "spec_hash": record["spec_hash"],
        "run_id": record["run_id"],
        "status": record["status"],
        "error": record["error"],
        "diverged_epoch": record["diverged_epoch"],
        "metrics": {
            "test_accuracy": m["test_accuracy"],
            "test_loss": m["test_loss"],
            "avg_dead_conv": m["avg_dead_conv"],
            "dead_fraction_conv": dead_fraction_conv(test_layers),
            "val_accuracy": m["val_accuracy"],
            "best_val_accuracy": m["best_val_accuracy"],
            "best_epoch": m["best_epoch"],
            "final_epoch": m["final_epoch"],
            "layer_order": list(m["layer_order"]),
            "layers": {
                name: {k: layer[k] for k in ("kind", "dead_count", "dead_fraction", "mean_activation", "types")}
                for name, layer in test_layers.items()
            },
            "grad_norms": m["grad_norms"],
        },
        "cost": {
            "wall_s": record["timings"]["wall_s"],
            "epoch_s": record["timings"]["epoch_s"],
            "images_per_s": record["timings"]["images_per_s"],
            "peak_memory_mb": record["peak_memory_mb"],
            "num_params": record["num_params"],
        },
        "config": _drop(config, _NOT_COMMITTED),
        "environment": record["environment"],
        "source_checksum": record["checksum"],
    }
    return entry


def to_entry(record: dict, source: str = "record") -> dict:
    """The leaderboard record of a (validated) run record, checked: names fit folders, schema holds."""
    entry = make_entry(record)
    for key in ("protocol", "dataset", "method"):
        if not NAME.match(str(entry[key])) or entry[key] == "records":
            raise UserError(
                f"{source}: {key} '{entry[key]}' cannot name a leaderboard folder; expected letters, digits, "
                "'.', '_' or '-' (and not 'records'); rename it in the spec and re-run"
            )
    if not re.fullmatch(r"[0-9]+", str(entry["protocol_version"])):
        raise UserError(
            f"{source}: protocol_version '{entry['protocol_version']}': expected the protocol's MAJOR version as "
            "digits (e.g. '1'); set protocol_version in the spec's protocol and re-run"
        )
    return check_leaderboard_record(entry, source)


def record_path(entry: dict) -> PurePosixPath:
    """Where ``entry`` lives, relative to the leaderboard root."""
    return PurePosixPath(
        "records",
        entry["protocol"],
        f"v{entry['protocol_version']}",
        entry["dataset"],
        entry["method"],
        f"{entry['spec_hash'][:12]}-s{entry['seed']}.json",
    )


def result_of(entry: dict) -> dict[str, Any]:
    """What must agree for two records with the same key to be the same result."""
    return {"status": entry["status"], "diverged_epoch": entry["diverged_epoch"], "metrics": entry["metrics"]}


def first_difference(a: Any, b: Any, prefix: str = "") -> str:
    """The first key (dotted) where ``a`` and ``b`` differ, with both values, for error messages."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return first_difference(x, y, f"{prefix}{i}.")
    return f"{prefix.rstrip('.')} {a!r} vs {b!r}"
