"""The run record, in one place: its schema version, sealing, verifying, checking, reading and writing.

A run record (``record.json`` of a run directory, written by ``capsbench.train.runner``) is a
JSON document sealed with a checksum so corruption is detectable: ``checksum`` is the sha256
of the canonical JSON (sorted keys, no spaces, no NaN) of the record without its ``checksum``
field. Non-finite floats are stored as null. Every write and every strict read also checks
it against ``record.schema.json`` (beside this module) at ``RUN_RECORD_VERSION``.

Example::

    record = seal({"schema_version": 1, "status": "ok", "metrics": {"test_loss": float("nan")}})
    record["metrics"]["test_loss"]      # None
    verify(record)                      # True
    read_run_record("runs/quickstart/depth1-seed0-cedb70a6/record.json")   # UserError when invalid
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from capsbench.errors import UserError
from capsbench.io import write_json
from capsbench.results.schema import read_json, validate

RUN_RECORD_VERSION = 1  # schema_version of run records this capsbench reads and writes
SCHEMA_FILE = "record.schema.json"
KIND = "run record"


def finite(obj: Any) -> Any:
    """A copy of ``obj`` with NaN/inf floats replaced by None and numpy/tuple types made plain."""
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if hasattr(obj, "item") and not isinstance(obj, float):  # numpy / torch scalars
        return finite(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    raise TypeError(f"cannot store {type(obj).__name__} in a run record")


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def checksum(record: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "checksum"}).encode()).hexdigest()


def seal(record: dict) -> dict:
    """The record made JSON-safe, with its ``checksum`` set."""
    record = finite({k: v for k, v in record.items() if k != "checksum"})
    record["checksum"] = checksum(record)
    return record


def verify(record: Any) -> bool:
    return isinstance(record, dict) and record.get("checksum") == checksum(record)


def check_schema(record: Any, source: str | Path = "record") -> dict:
    """Raise ``UserError`` unless ``record`` fits ``record.schema.json`` at ``RUN_RECORD_VERSION``."""
    return validate(record, SCHEMA_FILE, RUN_RECORD_VERSION, KIND, source)


def check_run_record(record: Any, source: str | Path = "record") -> dict:
    """Validate a run record against its schema and its checksum; one-line ``UserError`` otherwise."""
    check_schema(record, source)
    if not verify(record):
        raise UserError(
            f"{source}: checksum mismatch: the record was edited or corrupted after it was written; "
            "re-run the run (capsbench run starts it again) instead of editing record.json"
        )
    return record


def write_record(path: str | Path, record: dict) -> dict:
    """Seal, check against the schema, then write atomically."""
    record = seal(record)
    check_schema(record, path)
    write_json(path, record)
    return record


def read_run_record(path: str | Path) -> dict:
    """Read and validate ``record.json`` of a run directory; ``UserError`` naming the file otherwise."""
    return check_run_record(read_json(path), path)


def read_record(path: str | Path) -> dict | None:
    """The record at ``path`` when it parses, fits the schema and its checksum matches, else None."""
    try:
        return read_run_record(path)
    except UserError:
        return None
