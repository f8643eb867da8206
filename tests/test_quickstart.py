"""The README's main job, end to end through the real command line."""

from __future__ import annotations

import json

import pytest
from test_cli import REPO, capsbench


@pytest.mark.slow
def test_quickstart_runs_and_rerun_skips(tmp_path):
    result = capsbench("run", str(REPO / "specs" / "quickstart.yaml"), "--out", str(tmp_path), "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted((tmp_path / "quickstart").iterdir())
    assert [r.name.split("-")[0] for r in runs] == ["depth1", "depth3"]
    for run_dir in runs:
        assert {p.name for p in run_dir.iterdir()} >= {
            "config.yaml", "metrics.jsonl", "activations.npz", "record.json", "checkpoint.pt"
        }
        record = json.loads((run_dir / "record.json").read_text())
        assert record["status"] == "ok"
        assert record["metrics"]["test_accuracy"] > 0.5  # chance is 0.1 on digits
        depth = int(run_dir.name.split("-")[0].removeprefix("depth"))
        assert [n for n in record["metrics"]["layer_order"] if n.startswith("conv")] == [
            f"conv{i}" for i in range(1, depth + 1)
        ]
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == record["config"]["train"]["epochs"]
    # the results table names every run and its accuracy
    assert "test acc" in result.stdout and "depth1-seed0" in result.stdout

    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("record.json")}
    again = capsbench("run", str(REPO / "specs" / "quickstart.yaml"), "--out", str(tmp_path), "--quiet")
    assert again.returncode == 0
    assert "already finished" in again.stderr
    assert before == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("record.json")}  # never rewritten
