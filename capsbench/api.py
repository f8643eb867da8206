"""The Python face of capsbench, next to the CLI: run a spec, read the results as rows.

``run`` is what ``capsbench run`` does (same spec loading, overrides, executors, skipping of
finished runs and resuming of interrupted ones) and returns the run records instead of
printing them; ``load`` reads every finished run under a run, sweep or output folder as one
flat row per run (dotted keys), ready for ``pandas.DataFrame(rows)``.

Example (from a checkout; the README's "Python API" block, executed by tests/test_api.py)::

    from capsbench import api

    records = api.run("specs/quickstart.yaml", ["train.epochs=1"], out="runs/notebook")
    rows = api.load("runs/notebook/quickstart")
    [(row["config.model.depth"], row["metrics.test_accuracy"]) for row in rows]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capsbench.errors import UserError


def plan(
    spec: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None, *, out_key: str = "out",
    skip_recorded: str | Path | None = None,
) -> tuple[list, Path]:
    """The runs of ``spec`` with ``overrides`` (``"key=value"`` strings, as on the command line) and their folder.

    The folder (``out``, else the spec's ``output.dir``) is created and checked writable here, before
    any run starts; ``out_key`` names ``out`` in the one-line error (the CLI passes ``--out``).
    ``skip_recorded`` (a folder of leaderboard records, or a leaderboard's root) leaves out the runs
    recorded there, folder or not (``capsbench.executors.plan.without_recorded``), and says on stderr in
    one line which; the plan may then be empty.
    """
    from capsbench import spec as specs
    from capsbench.io import writable_dir

    runs = specs.load(spec, list(overrides))
    folder = writable_dir(out, out_key) if out is not None else writable_dir(runs[0].config.output.dir, "output.dir")
    if skip_recorded is not None:
        from capsbench.executors.plan import without_recorded

        runs, recorded = without_recorded(runs, Path(skip_recorded))
        if recorded:
            more = f" and {len(recorded) - 8} more" if len(recorded) > 8 else ""
            named = ", ".join(run.label for run in recorded[:8]) + more
            print(f"--skip-recorded: {len(recorded)} of {len(runs) + len(recorded)} runs have a record under "
                  f"{skip_recorded} and are left out ({named})", file=sys.stderr)
    return runs, folder


def run(
    spec: str | Path,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    *,
    executor: str | None = None,
    jobs: int | None = None,
    retry_failed: bool = False,
    quiet: bool = True,
    skip_recorded: str | Path | None = None,
) -> list[dict]:
    """Run every run of ``spec`` and return their records (finished runs are read back, not re-run).

    ``out`` defaults to the spec's ``output.dir``; run directories go to ``out/<spec name>/``.
    ``skip_recorded`` leaves out the runs recorded there (``plan``); their records are not among those returned.
    Bad input raises ``capsbench.errors.UserError`` with the one-line message the CLI prints.
    """
    runs, folder = plan(spec, overrides, out, skip_recorded=skip_recorded)
    if not runs:  # everything was recorded already
        return []
    return execute(runs, folder, executor=executor, jobs=jobs, retry_failed=retry_failed, quiet=quiet)


def execute(
    runs: list, out: Path, *, executor: str | None = None, jobs: int | None = None,
    retry_failed: bool = False, quiet: bool = True,
) -> list[dict]:
    """Run planned runs (``plan``) under ``out`` with the spec's executor unless ``executor`` names one."""
    from capsbench.executors import get_executor

    name = executor or str(runs[0].config.executor.name)
    return get_executor(name, quiet=quiet, jobs=jobs, retry_failed=retry_failed).run_all(runs, Path(out))


def load(path: str | Path) -> list[dict[str, Any]]:
    """One flat row per finished run under ``path`` (a run directory, a sweep folder or an output folder).

    Each row is the validated ``record.json`` with nested keys joined by dots
    (``config.model.depth``, ``metrics.test_accuracy``, ``timings.images_per_s``) plus
    ``path``, the run directory. Runs without a record (unfinished) are left out; a corrupt
    record is a ``UserError`` naming the file. Rows are in path order.
    """
    from capsbench.results.run_record import read_run_record

    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; expected a run directory or a sweep folder, e.g. runs/quickstart")
    rows = []
    for record_path in sorted(root.rglob("record.json")):
        row = {"path": str(record_path.parent)}
        row.update(flatten(read_run_record(record_path)))
        rows.append(row)
    return rows


def flatten(obj: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1]}`` -> ``{"a.b": 1, "c": [1]}``: mappings joined by dots, other values kept."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
