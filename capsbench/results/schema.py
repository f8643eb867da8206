"""JSON documents checked against the schemas shipped beside this module, and the leaderboard record.

- ``validate``: any document against a schema file at a schema version (the run record's
  module, ``run_record.py``, owns ``record.schema.json`` and its version and calls it);
- ``leaderboard-record.schema.json``: the small record committed under ``leaderboard/records/``,
  checked by ``check_leaderboard_record`` at ``LEADERBOARD_RECORD_VERSION``.

Every problem becomes one ``UserError`` line naming the file, the key and what was expected.

Example::

    entry = read_leaderboard_record("leaderboard/records/paper-mini/v1/mnist/capsnet-em/10d1858d6f19-s0.json")
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from capsbench.errors import UserError

LEADERBOARD_RECORD_VERSION = 1  # schema_version of leaderboard records
_HERE = Path(__file__).resolve().parent
LEADERBOARD_SCHEMA = "leaderboard-record.schema.json"


@cache
def _validator(schema_file: str):
    import jsonschema

    schema = json.loads((_HERE / schema_file).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _where(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def validate(obj: Any, schema_file: str, version: int, kind: str, source: str | Path) -> dict:
    """Raise ``UserError`` unless ``obj`` is a ``kind`` document at ``version`` that fits ``schema_file``."""
    if not isinstance(obj, dict):
        raise UserError(f"{source}: expected a JSON object ({kind}), got {type(obj).__name__}")
    found = obj.get("schema_version")
    if found != version:
        raise UserError(
            f"{source}: schema_version: expected {version} ({kind}), got {found!r}; "
            "it was written by another capsbench version: use that version, or re-run to get a current record"
        )
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator(schema_file).iter_errors(obj))
    if error is not None:
        message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
        raise UserError(f"{source}: {_where(error)}: {message} ({kind} schema {schema_file})")
    return obj


def check_leaderboard_record(entry: Any, source: str | Path = "leaderboard record") -> dict:
    return validate(entry, LEADERBOARD_SCHEMA, LEADERBOARD_RECORD_VERSION, "leaderboard record", source)


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


def read_leaderboard_record(path: str | Path) -> dict:
    return check_leaderboard_record(read_json(path), path)
