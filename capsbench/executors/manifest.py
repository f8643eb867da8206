"""``<out>/<spec name>/sweep.json``: which runs a sweep has and which SLURM job runs each.

Written atomically after every submission, merged with what is already there (a
sweep re-run with other overrides adds runs, it does not forget the earlier ones).
``capsbench status`` reads it; the run directories stay the source of truth for
results.

Example::

    m = Manifest.load(Path("runs/quickstart"))
    m.runs["depth1-seed0-1a2b3c4d"]["job_id"]      # '1234_0'
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from capsbench.io import write_json

FILENAME = "sweep.json"
SCHEMA_VERSION = 1


@dataclass
class Manifest:
    directory: Path
    spec: str = ""
    runs: dict[str, dict] = field(default_factory=dict)  # label -> entry

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        """The manifest in ``directory``; empty when there is none (or it cannot be read)."""
        directory = Path(directory)
        try:
            data = json.loads((directory / FILENAME).read_text())
        except (OSError, ValueError):
            return cls(directory)
        runs = data.get("runs") if isinstance(data, dict) else None
        return cls(directory, str(data.get("spec", "")), dict(runs) if isinstance(runs, dict) else {})

    def add_run(self, label: str, *, run_id: str, spec_hash: str, seed: int, point: dict, epochs: int) -> dict:
        entry = self.runs.setdefault(label, {})
        entry.update(run_id=run_id, spec_hash=spec_hash, seed=seed, point=point, epochs=epochs)
        entry.setdefault("jobs", [])
        return entry

    def set_job(self, label: str, job_id: str, executor: str = "slurm") -> None:
        entry = self.runs[label]
        entry.update(job_id=job_id, executor=executor, submitted=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        entry["jobs"] = [*entry.get("jobs", []), job_id]  # every submission, oldest first

    def save(self) -> Path:
        return write_json(
            self.directory / FILENAME,
            {"schema_version": SCHEMA_VERSION, "spec": self.spec, "runs": self.runs},
        )
