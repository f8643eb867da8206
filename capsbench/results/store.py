"""The record store: run directories in, validated leaderboard records out.

``add(root, paths)`` turns finished run directories (or folders of them) into leaderboard
records under ``root/records/`` and appends a change to ``root/changes.json``. Records are
immutable: a record whose key (protocol version, data set, method, spec hash, seed) is
already committed is a no-op when its result (status and metrics) is the same, and an error
naming both files when it is not. Nothing is written unless every record is acceptable.

Records of one protocol version must share the protocol's terms (epochs, step cap, dead
threshold; per data set the data split and preprocessing keys): a record that differs is
refused, so results of different protocols are never ranked together by mistake.

Example::

    result = add(Path("leaderboard"), [Path("runs/quickstart")], note="quickstart sweep")
    result.added, result.unchanged, result.skipped
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from capsbench.errors import UserError
from capsbench.io import write_json
from capsbench.results import ledger as ledger_mod
from capsbench.results.entry import first_difference, record_path, result_of, to_entry
from capsbench.results.run_record import read_run_record
from capsbench.results.schema import read_leaderboard_record

RECORDS = "records"
# Keys of the resolved config that a protocol version fixes, checked across all its records ...
PROTOCOL_KEYS = ("train.epochs", "train.max_steps_per_epoch", "metrics.dead_threshold")
# ... and, per data set, the split and preprocessing.
DATA_KEYS = ("data.image_size", "data.subset", "data.val_size", "data.test_subset", "data.split_seed",
             "data.normalize", "data.options")


@dataclass
class AddResult:
    added: list[str] = field(default_factory=list)  # record paths (relative to root) written now
    unchanged: list[str] = field(default_factory=list)  # already there with the same result
    skipped: list[Path] = field(default_factory=list)  # run directories without record.json (unfinished)


def find_runs(paths: list[str | Path]) -> tuple[list[Path], list[Path]]:
    """(finished run directories, unfinished ones) at or below ``paths``, sorted.

    A run directory holds ``record.json`` (finished) or ``config.yaml`` and ``metrics.jsonl``
    (started, not finished).
    """
    finished: set[Path] = set()
    unfinished: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UserError(f"{path}: no such run directory or folder")
        if path.is_file():
            raise UserError(f"{path}: expected a run directory (holding record.json) or a folder of them")
        found = {p.parent for p in path.rglob("record.json")}
        if (path / "record.json").exists():
            found.add(path)
        started = {p.parent for p in path.rglob("metrics.jsonl") if (p.parent / "config.yaml").exists()}
        if (path / "metrics.jsonl").exists() and (path / "config.yaml").exists():
            started.add(path)
        if not found and not started:
            raise UserError(f"{path}: no run directories found (folders holding record.json or metrics.jsonl)")
        finished |= found
        unfinished |= started - found
    return sorted(finished), sorted(unfinished)


def read_records(root: Path) -> dict[str, dict]:
    """Every leaderboard record under ``root/records``, validated, keyed by its path relative to ``root``."""
    root = Path(root)
    out = {}
    for path in sorted((root / RECORDS).rglob("*.json")):
        entry = read_leaderboard_record(path)
        rel = path.relative_to(root).as_posix()
        want = record_path(entry).as_posix()
        if rel != want:
            raise UserError(
                f"{path}: misplaced record: its protocol, data set, method, spec hash and seed put it at "
                f"{root / want}; records are written by `capsbench leaderboard add`, never moved by hand"
            )
        out[rel] = entry
    return out


def _terms(entry: dict, keys) -> dict:
    out = {}
    for dotted in keys:
        node = entry["config"]
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[dotted] = node
    return out


def check_protocol(items: dict[str, dict]) -> None:
    """Raise when two records of one protocol version (or one data set in it) disagree on its terms."""
    first: dict[tuple, tuple[str, dict]] = {}
    for source in sorted(items):
        entry = items[source]
        version = (entry["protocol"], entry["protocol_version"])
        for key, keys in (((*version,), PROTOCOL_KEYS), ((*version, entry["dataset"]), DATA_KEYS)):
            terms = _terms(entry, keys)
            if key not in first:
                first[key] = (source, terms)
            elif first[key][1] != terms:
                other, theirs = first[key]
                raise UserError(
                    f"{source} and {other}: both claim protocol {version[0]} v{version[1]} but differ in "
                    f"{first_difference(terms, theirs)}; a different protocol needs its own protocol name or "
                    "a new protocol_version"
                )


def add(root: str | Path, paths: list[str | Path], note: str | None = None, log=None) -> AddResult:
    """Validate the records of the finished runs under ``paths`` and add them to the leaderboard at ``root``."""
    log = log or (lambda line: print(line, file=sys.stderr))
    root = Path(root)
    committed = read_records(root)
    ledger = ledger_mod.read_ledger(root)
    ledger_mod.replay(ledger, root / ledger_mod.LEDGER)
    run_dirs, unfinished = find_runs(paths)
    result = AddResult(skipped=unfinished)
    for run_dir in unfinished:
        log(f"warning: {run_dir}: not finished (no record.json), skipped")
    if not run_dirs:
        raise UserError(f"{', '.join(map(str, paths))}: no finished runs to add")
    new: dict[str, tuple[dict, Path]] = {}
    for run_dir in run_dirs:
        source = run_dir / "record.json"
        entry = to_entry(read_run_record(source), str(source))
        rel = record_path(entry).as_posix()
        if rel in committed:
            if result_of(committed[rel]) != result_of(entry):
                raise _conflict(root / rel, source, committed[rel], entry)
            result.unchanged.append(rel)
        elif rel in new:
            if result_of(new[rel][0]) != result_of(entry):
                raise _conflict(new[rel][1], source, new[rel][0], entry)
        else:
            new[rel] = (entry, source)
    check_protocol({**{str(root / k): v for k, v in committed.items()}, **{str(s): e for e, s in new.values()}})
    for rel, (entry, _) in sorted(new.items()):
        write_json(root / rel, entry)
    listed = ledger_mod.listed_records(ledger)
    orphans = sorted(set(committed) - listed)  # written by an add that was interrupted before the ledger
    if orphans:
        log(f"note: listing {len(orphans)} record(s) that were under {root / RECORDS} but not in changes.json")
    missing = sorted(listed - set(committed) - set(new))
    if missing:
        raise UserError(
            f"{root / ledger_mod.LEDGER}: lists {missing[0]} but the file is missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; restore it from version control"
        )
    result.added = sorted(new)
    if result.added or orphans:
        write_json(root / ledger_mod.LEDGER, ledger_mod.append(ledger, result.added + orphans, note))
    return result


def _conflict(old: Path, new: Path, a: dict, b: dict) -> UserError:
    # name the headline difference when there is one, else the first differing key
    if a["status"] != b["status"]:
        diff = f"status {a['status']!r} vs {b['status']!r}"
    elif a["metrics"]["test_accuracy"] != b["metrics"]["test_accuracy"]:
        diff = f"metrics.test_accuracy {a['metrics']['test_accuracy']!r} vs {b['metrics']['test_accuracy']!r}"
    else:
        diff = first_difference(result_of(a), result_of(b))
    return UserError(
        f"{old} and {new}: same run (spec hash {a['spec_hash'][:12]}, seed {a['seed']}) but different results "
        f"({diff}); records are never overwritten: if the committed one is "
        f"wrong, `capsbench leaderboard remove {old} --note WHY` first"
    )


def remove(root: str | Path, paths: list[str | Path], note: str | None) -> list[str]:
    """Delete committed records (a reviewed correction) and log the removal in ``changes.json``."""
    root = Path(root)
    if not note:
        raise UserError("leaderboard remove: --note: say why the records are removed (it goes into the changelog)")
    committed = read_records(root)
    ledger = ledger_mod.read_ledger(root)
    ledger_mod.replay(ledger, root / ledger_mod.LEDGER)
    rels = []
    for raw in paths:
        path = Path(raw) if Path(raw).exists() else root / raw  # a path from here, or one relative to root
        try:
            rel = path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            rel = Path(raw).as_posix()
        if rel not in committed:
            raise UserError(f"{raw}: not a record of the leaderboard at {root} (expected a file in {root / RECORDS})")
        rels.append(rel)
    rels = sorted(set(rels))
    new_ledger = ledger_mod.append(ledger, [], note, removed=rels)
    for rel in rels:
        (root / rel).unlink()
    write_json(root / ledger_mod.LEDGER, new_ledger)
    return rels
