"""The run record: a JSON document sealed with a checksum so corruption is detectable.

``checksum`` is the sha256 of the canonical JSON (sorted keys, no spaces, no NaN)
of the record without its ``checksum`` field. Non-finite floats are stored as null.

Example::

    record = seal({"schema_version": 1, "status": "ok", "metrics": {"test_loss": float("nan")}})
    record["metrics"]["test_loss"]      # None
    verify(record)                      # True
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from capsbench.io import write_json

SCHEMA_VERSION = 1


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


def write_record(path: str | Path, record: dict) -> dict:
    """Seal, check against ``record.schema.json``, then write atomically."""
    from capsbench.results.schema import check

    record = seal(record)
    check(record, "run record", path)
    write_json(path, record)
    return record


def read_record(path: str | Path) -> dict | None:
    """The record at ``path`` when it parses and its checksum matches, else None."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not verify(record):
        return None
    from capsbench.errors import UserError
    from capsbench.results.schema import check

    try:
        check(record, "run record", path)
    except UserError:
        return None
    return record
