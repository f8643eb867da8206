"""What a sweep still has to do, read from the run directories alone.

Every executor decides the same way, so a sweep can be started under one executor
and finished under another:
- a run with a valid record whose status is ``ok`` or ``diverged`` is *done*: its
  result is final and it is never run again (divergence is a result, not an error);
- a record with status ``failed`` or ``oom`` is *failed*: skipped, unless the
  executor was asked to ``retry_failed``; then the record is set aside as
  ``record.failed-<n>.json`` (never deleted) and the run goes again, resuming from
  its last checkpoint when it has one;
- anything else (no record yet, a checkpoint, a corrupt record) is run: the runner
  resumes from ``checkpoint.pt`` when it is usable.

Example::

    todo, finished = split(runs, Path("runs"), retry_failed=False)
    [p.label for p in todo]          # the runs an executor must start
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from capsbench.errors import UserError
from capsbench.spec import RunSpec

FINAL = ("ok", "diverged")  # results: never run again
RETRYABLE = ("failed", "oom")  # run failures: run again with --retry-failed


def run_dir_for(out: Path, run: RunSpec) -> Path:
    """``<out>/<spec name>/<label>``: the swept values in the folder name, then a short hash."""
    return Path(out) / str(run.config.name) / run.label


def sweep_dir_for(out: Path, run: RunSpec) -> Path:
    """``<out>/<spec name>``: where a sweep's run directories (and ``sweep.json``) live."""
    return Path(out) / str(run.config.name)


def read_own_record(directory: Path, spec_hash: str, seed: int) -> dict | None:
    """The valid record of this run in ``directory`` (checksum ok, same spec hash and seed), else None."""
    from capsbench.results.run_record import read_record

    path = Path(directory) / "record.json"
    if not path.exists():
        return None
    record = read_record(path)
    if record is None or record.get("spec_hash") != spec_hash or record.get("seed") != seed:
        return None
    return record


def epochs_done(directory: Path) -> int:
    """Completed epochs, from ``metrics.jsonl`` (one line per epoch; 0 when absent)."""
    try:
        return sum(1 for line in (Path(directory) / "metrics.jsonl").read_text().splitlines() if line.strip())
    except OSError:
        return 0


@dataclass
class Planned:
    """One run of a sweep and what its directory holds."""

    run: RunSpec
    directory: Path
    record: dict | None  # the run's own valid record, when it has one

    @property
    def label(self) -> str:
        return self.run.label

    @property
    def state(self) -> str:
        """``done``, ``failed``, ``interrupted`` (started, no record) or ``new``."""
        if self.record is not None:
            return "done" if self.record.get("status") in FINAL else "failed"
        if (self.directory / "checkpoint.pt").exists() or (self.directory / "config.yaml").exists():
            return "interrupted"
        return "new"


def plan(runs: list[RunSpec], out: Path) -> list[Planned]:
    planned = []
    for run in runs:
        directory = run_dir_for(out, run)
        planned.append(Planned(run, directory, read_own_record(directory, run.spec_hash, run.seed)))
    return planned


def set_aside(record_path: Path) -> Path:
    """Rename a failed ``record.json`` to ``record.failed-<n>.json`` (first free n); never overwrites."""
    record_path = Path(record_path)
    n = 1
    while True:
        target = record_path.with_name(f"record.failed-{n}.json")
        n += 1
        if target.exists():
            continue
        try:
            os.link(record_path, target)  # fails when target exists: no earlier failure is overwritten
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links
            os.rename(record_path, target)
            return target
        record_path.unlink()
        return target


def split(runs: list[RunSpec], out: Path, *, retry_failed: bool) -> tuple[list[Planned], list[Planned]]:
    """``(todo, finished)``. With ``retry_failed`` failed records are set aside and their runs go in todo."""
    todo, finished = [], []
    for p in plan(runs, out):
        if p.state == "done" or (p.state == "failed" and not retry_failed):
            finished.append(p)
            continue
        if p.state == "failed":
            set_aside(p.directory / "record.json")
            p.record = None
        todo.append(p)
    return todo, finished


# ----------------------------------------------------------------------------- one run as data


def payload(p: Planned) -> dict:
    """Everything a worker process needs to train one run: plain JSON, no spec file needed."""
    return {
        "config": OmegaConf.to_container(p.run.config, resolve=True),
        "spec_hash": p.run.spec_hash,
        "point": p.run.point,
        "run_dir": str(Path(p.directory).resolve()),
    }


def from_payload(data: dict) -> tuple[RunSpec, Path]:
    """The RunSpec and run directory of a payload; checks that the config still hashes the same.

    A different hash means this capsbench computes results differently from the one
    that planned the sweep (another version on the compute nodes): refuse, or the
    record would be filed under the wrong experiment.
    """
    from capsbench import spec

    cfg = spec.build_config(json.loads(json.dumps(data["config"])))
    run = RunSpec(config=cfg, spec_hash=spec.spec_hash(cfg), point=dict(data.get("point") or {}))
    if run.spec_hash != data["spec_hash"]:
        raise UserError(
            f"{data['run_dir']}: the config hashes to {run.spec_hash[:12]} here but {data['spec_hash'][:12]} where the "
            "sweep was planned; use the same capsbench version on every node"
        )
    return run, Path(data["run_dir"])


def without_recorded(runs: list[RunSpec], records: Path) -> tuple[list[RunSpec], list[RunSpec]]:
    """``(to_run, recorded)``: the runs with no leaderboard record at or below ``records``, and those with one.

    ``records`` is a folder of records (``leaderboard/records/long-cpu/v1``) or a leaderboard's root.
    A run is recorded when a record there has its spec hash and seed. Its folder may be gone (not archived
    before a machine was returned): under ``numerics: native`` training it again on a CPU with another
    instruction set gives other bits, a new result that ``capsbench leaderboard add`` refuses beside the
    committed one, so ``capsbench run --skip-recorded`` leaves it to the record (``report --records``).
    """
    from capsbench.results.schema import read_leaderboard_record

    records = Path(records)
    if (records / "records").is_dir():  # a leaderboard's root: its records, not its built files
        records = records / "records"
    if not records.is_dir():
        raise UserError(f"--skip-recorded: {records} is not a folder of leaderboard records "
                        "(e.g. leaderboard/records/long-cpu/v1)")
    keys = set()
    for path in sorted(records.rglob("*.json")):
        entry = read_leaderboard_record(path)
        keys.add((entry["spec_hash"], entry["seed"]))
    to_run = [run for run in runs if (run.spec_hash, run.seed) not in keys]
    return to_run, [run for run in runs if (run.spec_hash, run.seed) in keys]
