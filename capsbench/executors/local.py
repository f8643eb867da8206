"""Run every run of a sweep in this process, one after another."""

from __future__ import annotations

import sys
from pathlib import Path

from capsbench.spec import RunSpec


def run_dir_for(out: Path, run: RunSpec) -> Path:
    """``<out>/<spec name>/<label>``: the swept values in the folder name, then a short hash."""
    return Path(out) / str(run.config.name) / run.label


class LocalExecutor:
    """In-process execution. A run that fails is recorded and the sweep goes on."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def run_all(self, runs: list[RunSpec], out: Path) -> list[dict]:
        from capsbench.train.runner import run as run_one

        records = []
        for i, run in enumerate(runs, 1):
            directory = run_dir_for(out, run)
            if not self.quiet:
                point = ", ".join(f"{k}={v}" for k, v in run.point.items()) or "single run"
                print(f"[{i}/{len(runs)}] {run.config.name}: {point} -> {directory}", file=sys.stderr)
            progress = not self.quiet and bool(run.config.output.progress) and not bool(run.config.output.quiet)
            record = run_one(run.config, directory, spec_hash=run.spec_hash, progress=progress)
            records.append(record)
        return records
