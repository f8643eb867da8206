"""JSON Schemas of run records and leaderboard records, checked on every write and read.

Two schemas live beside this module (and ship in the package):

- ``record.schema.json``: ``record.json`` of a run directory (see ``capsbench.train.runner``);
- ``leaderboard-record.schema.json``: the small record committed under ``leaderboard/records/``.

Every problem becomes one ``UserError`` line naming the file, the key and what was expected.

Example::

    record = read_run_record("runs/quickstart/depth1-seed0-cedb70a6/record.json")
    check_run_record(record, "record.json")          # raises UserError when it does not fit
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from capsbench.errors import UserError

RUN_RECORD_VERSION = 1  # schema_version of run records this capsbench reads and writes
LEADERBOARD_RECORD_VERSION = 1  # schema_version of leaderboard records
_HERE = Path(__file__).resolve().parent
SCHEMAS = {"run record": "record.schema.json", "leaderboard record": "leaderboard-record.schema.json"}
VERSIONS = {"run record": RUN_RECORD_VERSION, "leaderboard record": LEADERBOARD_RECORD_VERSION}


@cache
def _validator(kind: str):
    import jsonschema

    schema = json.loads((_HERE / SCHEMAS[kind]).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _where(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def check(obj: Any, kind: str, source: str | Path) -> dict:
    """Raise ``UserError`` unless ``obj`` is a valid ``kind`` ('run record' or 'leaderboard record')."""
    if not isinstance(obj, dict):
        raise UserError(f"{source}: expected a JSON object ({kind}), got {type(obj).__name__}")
    version = obj.get("schema_version")
    if version != VERSIONS[kind]:
        raise UserError(
            f"{source}: schema_version: expected {VERSIONS[kind]} ({kind}), got {version!r}; "
            "it was written by another capsbench version: use that version, or re-run to get a current record"
        )
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator(kind).iter_errors(obj))
    if error is not None:
        message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
        raise UserError(f"{source}: {_where(error)}: {message} ({kind} schema {SCHEMAS[kind]})")
    return obj


def check_run_record(record: Any, source: str | Path = "record") -> dict:
    """Validate a run record against ``record.schema.json`` (and its checksum when it has one)."""
    from capsbench.train.record import verify

    check(record, "run record", source)
    if not verify(record):
        raise UserError(
            f"{source}: checksum mismatch: the record was edited or corrupted after it was written; "
            "re-run the run (capsbench run starts it again) instead of editing record.json"
        )
    return record


def check_leaderboard_record(entry: Any, source: str | Path = "leaderboard record") -> dict:
    return check(entry, "leaderboard record", source)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; unreadable or malformed files become one ``UserError`` line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UserError(f"{path}: malformed JSON ({exc})") from None


def read_run_record(path: str | Path) -> dict:
    """Read and validate ``record.json`` of a run directory."""
    return check_run_record(read_json(path), path)


def read_leaderboard_record(path: str | Path) -> dict:
    return check_leaderboard_record(read_json(path), path)
