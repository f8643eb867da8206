"""Committed leaderboard records standing in for run folders that were not kept.

A run folder holds everything a run measured; the leaderboard record of the same run keeps its config and final
metrics (accuracy, per-layer activations, gradient norms, cost) but not the per-epoch history, the activation
arrays or the mechanism terms. When a folder is lost before it was archived, the record still carries what the
remedies rules decide on (accuracy, dead fraction, the gradient ratio rho), and re-running the run on another
machine would not give it back: under ``numerics: native`` the bits depend on the CPU's instruction set
(docs/remedies.md, "Results"). So ``capsbench report ... --questions remedies --records DIR`` reads such runs
from their records, and says so in every table that lists runs.

Example::

    stand_ins = record_runs(Path("leaderboard/records/long-cpu/v1"), skip={"em-depth10-seed0-65a1ec8c"})
    stand_ins[0].record["metrics"]["test_accuracy"]
"""

from __future__ import annotations

from pathlib import Path

from capsbench.errors import UserError
from capsbench.results.schema import read_leaderboard_record


class RecordRun:
    """A leaderboard record behind the part of ``RunDir``'s interface that rows are built from.

    ``path.name`` is the run's folder name (the record's ``run_id``), so a plan matches it as it matches a folder;
    ``source`` is the record file. No history, no activations: ``mechanism`` is absent from its metrics."""

    history: list[dict] = []

    def __init__(self, source: Path, entry: dict):
        self.source = Path(source)
        self.path = Path(str(entry["run_id"]))
        cost = entry.get("cost") or {}
        # the fields of a run record that the report's rows read, under the run record's names: a leaderboard
        # record keeps the test split's layers only, flat (results/entry.py, make_entry)
        metrics = {**entry["metrics"], "layers": {"test": entry["metrics"].get("layers") or {}}}
        self.record = {"status": entry["status"], "config": entry["config"], "metrics": metrics,
                       "num_classes": entry.get("num_classes"), "peak_memory_mb": cost.get("peak_memory_mb")}

    def config(self) -> dict:
        return self.record["config"]

    def layer_order(self) -> list[str]:
        return list(self.record["metrics"].get("layer_order") or [])


def record_runs(root: Path, skip: set[str] = frozenset()) -> list[RecordRun]:
    """Every leaderboard record at or below ``root`` (``*.json``) whose run is not in ``skip``, sorted by run."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--records: {root} is not a folder of leaderboard records "
                        "(e.g. leaderboard/records/long-cpu/v1)")
    runs = [RecordRun(path, read_leaderboard_record(path)) for path in sorted(root.rglob("*.json"))]
    return sorted((r for r in runs if r.path.name not in skip), key=lambda r: r.path.name)
