"""``capsbench status SWEEP_DIR``: pending, running, interrupted, done and failed runs of a sweep.

SWEEP_DIR is ``<out>/<spec name>`` (or ``<out>``, for every sweep in it). Runs come from
``sweep.json`` (written by the SLURM executor) and from the run directories on disk;
the state of each comes from its files and, for SLURM jobs, from ``squeue``:
- done: a valid record with status ok or diverged;
- failed: a record with status failed or oom, or a job that ended before training started;
- running: a process holds the run's lock (``capsbench.runlock``: a local run in another
  terminal, a ``--jobs`` worker, a SLURM task), or its SLURM job is running;
- pending: its SLURM job is waiting in the queue;
- interrupted: started (config or checkpoint on disk), no record, no lock held and no live
  job: the same ``capsbench run`` command resumes it.

Example::

    capsbench status runs/quickstart
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from capsbench import runlock
from capsbench.errors import UserError
from capsbench.executors import squeue
from capsbench.executors.manifest import FILENAME, Manifest
from capsbench.executors.plan import FINAL, epochs_done, read_own_record

STATES = ("done", "running", "pending", "interrupted", "failed")
RUN_FILES = ("record.json", "checkpoint.pt", "config.yaml")


@dataclass
class RunStatus:
    label: str
    state: str
    epochs: str  # "done/total" (total "?" without a manifest)
    job_id: str
    detail: str


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def sweep_dirs(path: Path) -> list[Path]:
    """``path`` itself when it holds a sweep, else the sweeps directly inside it."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such folder; expected <out>/<spec name> of a sweep, e.g. runs/quickstart")

    def holds_sweep(d: Path) -> bool:
        return (d / FILENAME).exists() or any(_is_run_dir(c) for c in d.iterdir())

    if holds_sweep(path):
        return [path]
    inner = sorted(d for d in path.iterdir() if d.is_dir() and holds_sweep(d))
    if not inner:
        raise UserError(f"{path}: no sweep here (no {FILENAME} and no run directories); expected <out>/<spec name>")
    return inner


def collect(sweep_dir: Path) -> tuple[list[RunStatus], bool]:
    """The status of every run in ``sweep_dir``, and whether squeue could be asked."""
    from capsbench.results.run_record import read_record

    manifest = Manifest.load(sweep_dir)
    labels = list(manifest.runs)
    labels += sorted(d.name for d in sweep_dir.iterdir() if _is_run_dir(d) and d.name not in manifest.runs)
    jobs = [e.get("job_id") for e in manifest.runs.values() if e.get("job_id")]
    states = squeue.job_states(jobs) if jobs else {}
    rows = []
    for label in labels:
        entry = manifest.runs.get(label, {})
        directory = sweep_dir / label
        if "spec_hash" in entry:
            record = read_own_record(directory, entry["spec_hash"], entry.get("seed"))
        else:  # a run this sweep.json does not list (e.g. run locally): trust its record's checksum
            record = read_record(directory / "record.json") if (directory / "record.json").exists() else None
        job = str(entry.get("job_id") or "")
        total = entry.get("epochs") or (record or {}).get("config", {}).get("train", {}).get("epochs") or "?"
        epochs = f"{epochs_done(directory)}/{total}"
        job_state = (states or {}).get(job) if job else None
        state, detail = _state(directory, record, job, job_state, states is not None)
        rows.append(RunStatus(label, state, epochs, job, detail))
    return rows, states is not None


def _state(directory: Path, record: dict | None, job: str, job_state, asked: bool) -> tuple[str, str]:
    holder = runlock.holder(directory)  # a process training it now, on this machine or (lease) any node
    if holder is not None:
        return "running", holder
    if record is not None:
        status = record.get("status")
        acc = (record.get("metrics") or {}).get("test_accuracy")
        detail = str(status) + (f", test accuracy {acc:.4f}" if isinstance(acc, float) else "")
        if record.get("error"):
            detail += f" ({record['error']})"
        return ("done" if status in FINAL else "failed"), detail
    started = (directory / "checkpoint.pt").exists() or (directory / "config.yaml").exists()
    if squeue.is_running(job_state):
        return "running", job_state[0]
    if squeue.is_live(job_state):
        return "pending", f"{job_state[0]} ({job_state[1]})" if job_state[1] else job_state[0]
    if started:
        how = f"job {job} {job_state[0].lower()}; " if job and job_state else ""
        return "interrupted", how + "run the same command again to resume"
    if job and asked:
        log = directory.parent / "slurm" / f"{job}_0_log.err"
        return "failed", f"job {job} {job_state[0].lower() if job_state else 'ended'} before training (log: {log})"
    return "pending", "not started" if not job else "not started (squeue not available here)"


def format_table(rows: list[RunStatus]) -> str:
    header = ["run", "state", "epochs", "job", "detail"]
    table = [header] + [[r.label, r.state, r.epochs, r.job_id or "-", r.detail] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1] for row in table)


def counts(rows: list[RunStatus]) -> str:
    n = {state: sum(r.state == state for r in rows) for state in STATES}
    return f"{len(rows)} run(s): " + ", ".join(f"{n[s]} {s}" for s in STATES)


def cmd_status(args) -> int:
    for sweep_dir in sweep_dirs(Path(args.sweep_dir)):
        rows, asked = collect(sweep_dir)
        print(f"{sweep_dir}")
        print(format_table(rows))
        print(counts(rows))
        if not asked:
            print("note: squeue is not available here, so SLURM job states are unknown", file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> dict:
    from capsbench.cli import debug_flag

    parser = sub.add_parser("status", help="pending, running, done and failed runs of a sweep folder")
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="<out>/<spec name>, e.g. runs/quickstart")
    debug_flag(parser)
    return {"status": cmd_status}
