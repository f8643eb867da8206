"""``leaderboard/changes.json``: the append-only list of changes, and the versions it implies.

Every ``capsbench leaderboard add`` (or ``remove``) that changes the records appends one
change per protocol version it touched: the record paths it added (``records``) and removed
(``removed``), the (data set, method) pairs that were new, a date and an optional note.
Nothing else writes this file; ``build`` renders it as ``CHANGELOG.md`` and ``check``
replays it and compares the records it lists with the files under ``records/``.

Versions are per protocol version, ``MAJOR.MINOR.PATCH``:

- MAJOR is the protocol version itself (data splits, preprocessing, epochs, optimiser,
  metric definitions): records of different MAJORs live in different folders and tables
  and are never ranked together;
- MINOR counts the changes that added a new method or data set (a new (data set, method)
  pair); the first change of a protocol version is ``MAJOR.0.0``;
- PATCH counts the changes since the last MINOR that only added records to existing pairs
  (more seeds or depths) or removed records.

Example::

    ledger = read_ledger(root)                      # {"schema_version": 1, "changes": [...]}
    replay(ledger)                                  # {("quickstart", "1"): "1.1.0"}
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path, PurePosixPath

from capsbench.errors import UserError
from capsbench.results.schema import read_json

LEDGER = "changes.json"
LEDGER_VERSION = 1


def empty() -> dict:
    return {"schema_version": LEDGER_VERSION, "changes": []}


def read_ledger(root: Path) -> dict:
    """The ledger of ``root`` (an empty one when the file does not exist yet), shape-checked."""
    path = Path(root) / LEDGER
    if not path.exists():
        return empty()
    ledger = read_json(path)
    if not isinstance(ledger, dict) or ledger.get("schema_version") != LEDGER_VERSION:
        raise UserError(f"{path}: expected {{\"schema_version\": {LEDGER_VERSION}, \"changes\": [...]}}")
    changes = ledger.get("changes")
    if not isinstance(changes, list):
        raise UserError(f"{path}: changes: expected a list")
    keys = {"protocol", "protocol_version", "version", "date", "note", "new", "records", "removed"}
    for i, change in enumerate(changes):
        if not isinstance(change, dict) or set(change) != keys:
            raise UserError(f"{path}: changes.{i}: expected exactly the keys {', '.join(sorted(keys))}")
        for name in ("records", "removed"):
            if not isinstance(change[name], list) or not all(isinstance(r, str) for r in change[name]):
                raise UserError(f"{path}: changes.{i}.{name}: expected a list of record paths")
        if not isinstance(change["new"], list) or not all(isinstance(r, str) for r in change["new"]):
            raise UserError(f"{path}: changes.{i}.new: expected a list of 'dataset/method' strings")
    return ledger


def pair_of(record_path: str) -> tuple[str, str, str, str]:
    """(protocol, protocol_version, dataset, method) from ``records/<p>/v<pv>/<dataset>/<method>/<file>``."""
    parts = PurePosixPath(record_path).parts
    if len(parts) != 6 or parts[0] != "records" or not parts[2].startswith("v"):
        raise UserError(f"{record_path}: expected records/<protocol>/v<version>/<dataset>/<method>/<file>.json")
    return parts[1], parts[2][1:], parts[3], parts[4]


def expected_changes(changes: list[dict], source: str | Path = LEDGER) -> list[tuple[str, list[str]]]:
    """What the rule says each change is: (version, new 'dataset/method' pairs), in order."""
    seen: dict[tuple[str, str], set[tuple[str, str]]] = {}
    current: dict[tuple[str, str], tuple[int, int]] = {}
    live: set[str] = set()
    out = []
    for i, change in enumerate(changes):
        key = (change["protocol"], change["protocol_version"])
        pairs = seen.setdefault(key, set())
        new = []
        for path in change["removed"]:
            if path not in live:
                raise UserError(f"{source}: changes.{i}: removes {path}, which is not in the leaderboard")
            live.discard(path)
        for path in change["records"]:
            if path in live:
                raise UserError(f"{source}: changes.{i}: adds {path}, which is already in the leaderboard")
            live.add(path)
        for path in change["records"] + change["removed"]:
            protocol, pv, dataset, method = pair_of(path)
            if (protocol, pv) != key:
                raise UserError(f"{source}: changes.{i}: {path} is not a record of {key[0]} v{key[1]}")
            if path in change["records"] and (dataset, method) not in pairs:
                pairs.add((dataset, method))
                new.append(f"{dataset}/{method}")
        if key not in current:
            minor, patch = 0, 0  # the first change of a protocol version
        elif new:
            minor, patch = current[key][0] + 1, 0
        else:
            minor, patch = current[key][0], current[key][1] + 1
        current[key] = (minor, patch)
        out.append((f"{key[1]}.{minor}.{patch}", sorted(new)))
    return out


def replay(ledger: dict, source: str | Path = LEDGER) -> dict[tuple[str, str], str]:
    """Check every change's ``version`` and ``new`` against the rule; return the latest version per protocol."""
    latest = {}
    for i, (change, (version, new)) in enumerate(zip(ledger["changes"], expected_changes(ledger["changes"], source))):
        if change["version"] != version or change["new"] != new:
            raise UserError(
                f"{source}: changes.{i}: expected version {version} and new {new}, got {change['version']} and "
                f"{change['new']}; this file is written by `capsbench leaderboard add` only"
            )
        latest[(change["protocol"], change["protocol_version"])] = version
    return latest


def listed_records(ledger: dict) -> set[str]:
    """The record paths the ledger says are in the leaderboard now (added and not removed since)."""
    live: set[str] = set()
    for change in ledger["changes"]:
        live -= set(change["removed"])
        live |= set(change["records"])
    return live


def today() -> str:
    """UTC date of a change; ``SOURCE_DATE_EPOCH`` (seconds) pins it for reproducible builds and tests."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    return moment.date().isoformat()


def append(ledger: dict, added: list[str], note: str | None, removed: list[str] = ()) -> dict:
    """A copy of ``ledger`` with one change per protocol version among the ``added`` and ``removed`` paths."""
    by_key: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for paths, slot in ((added, 0), (removed, 1)):
        for path in sorted(paths):
            protocol, pv, _, _ = pair_of(path)
            by_key.setdefault((protocol, pv), ([], []))[slot].append(path)
    changes = list(ledger["changes"])
    for (protocol, pv), (adds, removes) in sorted(by_key.items()):
        changes.append({
            "protocol": protocol, "protocol_version": pv, "version": "", "date": today(),
            "note": note or "", "new": [], "records": adds, "removed": removes,
        })
    for change, (version, new) in zip(changes, expected_changes(changes)):
        if not change["version"]:
            change["version"], change["new"] = version, new
    ledger = {"schema_version": LEDGER_VERSION, "changes": changes}
    replay(ledger)
    return ledger
