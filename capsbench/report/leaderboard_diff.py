"""``capsbench leaderboard diff``: what a pending change does to the tables and ranks (for a PR description).

Compares the leaderboard built from the records at a git revision (``--base``, default HEAD)
with the one built from the working tree: per (protocol version, data set), rows added or
removed, rank and tie changes, and changes of the headline scores. Markdown lines, ready to
paste; "no change" when nothing moves.

Example::

    diff_tables(old_records, new_records)   # ['### ci v1 / digits', '- capsnet-em: rank 2 -> =1 ...', ...]
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from capsbench.errors import UserError
from capsbench.report.leaderboard_tables import rank_text
from capsbench.results.scores import aggregate
from capsbench.results.store import RECORDS, read_records

SHOWN = (("deepest_accuracy", "deepest accuracy", "pct"), ("best_accuracy", "best accuracy", "pct"),
         ("retention", "retention", "num"), ("collapse_depth", "collapse depth", "depth"),
         ("half_dead_depth", "half-dead depth", "depth"))


def _fmt(value, kind: str) -> str:
    if value is None:
        return "never" if kind == "depth" else "–"
    return f"{100 * value:.1f}%" if kind == "pct" else (f"{value:.3f}" if kind == "num" else str(value))


def _rows(records: dict[str, dict]) -> dict[tuple, dict]:
    by_version: dict[tuple[str, str], list[dict]] = {}
    for entry in records.values():
        by_version.setdefault((entry["protocol"], entry["protocol_version"]), []).append(entry)
    out = {}
    for (protocol, pv), entries in sorted(by_version.items()):
        for dataset, tab in aggregate(entries).items():
            for row in tab["rows"]:
                out[(f"{protocol} v{pv}", dataset, row["name"])] = row
    return out


def diff_tables(old: dict[str, dict], new: dict[str, dict]) -> list[str]:
    a, b = _rows(old), _rows(new)
    lines: list[str] = []
    current = None
    for key in sorted(set(a) | set(b)):
        section = f"### {key[0]} / {key[1]}"
        changes = []
        if key not in a:
            changes.append(f"- {key[2]}: new row, rank {rank_text(b[key])}, deepest accuracy "
                           f"{_fmt(b[key]['scores']['deepest_accuracy'], 'pct')}")
        elif key not in b:
            changes.append(f"- {key[2]}: removed (was rank {rank_text(a[key])})")
        else:
            x, y = a[key], b[key]
            parts = []
            if rank_text(x) != rank_text(y):
                parts.append(f"rank {rank_text(x)} -> {rank_text(y)}")
            for score, label, kind in SHOWN:
                if _fmt(x["scores"][score], kind) != _fmt(y["scores"][score], kind):
                    parts.append(f"{label} {_fmt(x['scores'][score], kind)} -> {_fmt(y['scores'][score], kind)}")
            if x["runs"] != y["runs"]:
                parts.append(f"runs {x['runs']} -> {y['runs']}")
            if parts:
                changes.append(f"- {key[2]}: " + "; ".join(parts))
        if changes:
            if section != current:
                lines.append(section)
                current = section
            lines.extend(changes)
    return lines or ["no change to any table or rank"]


def records_at(root: Path, revision: str) -> dict[str, dict]:
    """The leaderboard records of ``root`` as committed at git ``revision`` (read into a scratch folder)."""
    root = Path(root).resolve()
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        prefix = (root / RECORDS).relative_to(top).as_posix()
        names = subprocess.run(["git", "ls-tree", "-r", "--name-only", revision, "--", prefix], cwd=top,
                               capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError, ValueError) as exc:
        raise UserError(f"--base {revision}: cannot read {root / RECORDS} at that git revision ({exc})") from None
    with tempfile.TemporaryDirectory(prefix="capsbench-diff-") as scratch:
        for name in names:
            if not name.endswith(".json"):
                continue
            target = Path(scratch) / RECORDS / Path(name).relative_to(prefix)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(subprocess.run(["git", "show", f"{revision}:{name}"], cwd=top, capture_output=True,
                                              check=True).stdout)
        return read_records(Path(scratch))


def diff_against(root: Path, revision: str) -> list[str]:
    return diff_tables(records_at(root, revision), read_records(Path(root)))
