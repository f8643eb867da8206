"""Executors without a cluster: local in-process vs N worker processes, retry of failed runs,
the sweep manifest, ``capsbench status`` and the SLURM settings checks.

Real tiny runs on the shipped ``digits`` data set; the SLURM path itself is in test_slurm_cluster.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from capsbench import spec
from capsbench.cli import main
from capsbench.errors import UserError
from capsbench.executors import get_executor
from capsbench.executors.local import LocalExecutor
from capsbench.executors.manifest import Manifest
from capsbench.executors.plan import plan, run_dir_for, set_aside, split
from capsbench.executors.status import collect, counts
from capsbench.results.run_record import read_record, write_record

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = str(REPO / "specs" / "quickstart.yaml")
TINY = ["model.depth=1", "train.epochs=1", "data.subset=200", "data.test_subset=100", "train.max_steps_per_epoch=3"]
VOLATILE = {"timings", "environment", "peak_memory_mb", "checksum", "config"}  # how and where, not what


def comparable(record: dict) -> dict:
    """A record without timings/environment; its config without the keys that do not change results."""
    out = {k: v for k, v in record.items() if k not in VOLATILE}
    out["config"] = {k: v for k, v in record["config"].items() if k not in ("executor", "output")}
    return out


def fake_failed_record(run, directory: Path) -> dict:
    """A schema-valid record of a run that failed."""
    from capsbench.results.testing import fake_run_record

    record = fake_run_record(status="failed", seed=run.seed, accuracy=None)
    record.update(spec=str(run.config.name), spec_hash=run.spec_hash, run_id=run.label, error="RuntimeError: boom")
    return write_record(directory / "record.json", record)


def test_jobs_n_in_worker_processes_gives_the_same_records_as_in_process(tmp_path, monkeypatch, capsys):
    runs = spec.load(QUICKSTART, [*TINY, "sweep.seed=[0,1]"])
    in_process = LocalExecutor(quiet=True).run_all(runs, tmp_path / "a")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same CPU threads as this test process: bitwise equal sums
    parallel = LocalExecutor(quiet=False, jobs=2).run_all(runs, tmp_path / "b")
    assert [r["status"] for r in parallel] == ["ok", "ok"]
    assert [comparable(r) for r in parallel] == [comparable(r) for r in in_process]
    assert [r["run_id"] for r in parallel] == [run.label for run in runs]  # in sweep order
    err = capsys.readouterr().err
    assert "2 at once" in err and "[2/2]" in err  # sweep-level progress
    logs = sorted(p.name for p in (tmp_path / "b" / "quickstart" / "logs").iterdir())
    assert logs == sorted(f"{run.label}.log" for run in runs)

    # a second pass starts no worker: finished runs are skipped, their records untouched
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "b").rglob("record.json")}
    again = LocalExecutor(jobs=2).run_all(runs, tmp_path / "b")
    assert [comparable(r) for r in again] == [comparable(r) for r in parallel]
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "b").rglob("record.json")}
    assert "already finished (ok), skipped" in capsys.readouterr().err


def test_bad_input_in_one_worker_stops_the_sweep_and_spares_the_others(tmp_path, capsys):
    """mnist is not under data.root: its worker exits 2, the running digits run still finishes,
    fashion_mnist (queued) never starts, and the command ends with exit code 2 and one line."""
    code = main(
        [
            "run",
            QUICKSTART,
            "--out",
            str(tmp_path),
            "--jobs",
            "2",
            *TINY,
            "sweep.data.name=[digits,mnist,fashion_mnist]",
            f"data.root={tmp_path / 'nothing'}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "mnist-seed0" in err.splitlines()[-1] and "mnist: data not found" in err.splitlines()[-1]
    (digits,) = (tmp_path / "quickstart").glob("digits-*")
    assert read_record(digits / "record.json")["status"] == "ok"
    assert not list((tmp_path / "quickstart").rglob("*fashion_mnist*"))  # never started


@pytest.mark.parametrize("jobs", [1, 2])
def test_failed_runs_are_skipped_unless_retry_failed_and_never_lost(tmp_path, jobs, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (run,) = spec.load(QUICKSTART, TINY)
    directory = run_dir_for(tmp_path, run)
    failed = fake_failed_record(run, directory)

    (record,) = LocalExecutor(quiet=True, jobs=jobs).run_all([run], tmp_path)
    assert record == failed and read_record(directory / "record.json") == failed  # skipped, untouched

    (record,) = LocalExecutor(quiet=True, jobs=jobs, retry_failed=True).run_all([run], tmp_path)
    assert record["status"] == "ok" and read_record(directory / "record.json") == record
    assert json.loads((directory / "record.failed-1.json").read_text()) == failed  # kept aside, byte for byte

    # a finished ok run is never retried, even with --retry-failed
    before = (directory / "record.json").stat().st_mtime_ns
    (again,) = LocalExecutor(quiet=True, jobs=jobs, retry_failed=True).run_all([run], tmp_path)
    assert again == record and (directory / "record.json").stat().st_mtime_ns == before


def test_set_aside_numbers_failures_and_never_overwrites(tmp_path):
    (tmp_path / "record.failed-1.json").write_text("first")
    (tmp_path / "record.json").write_text("second")
    assert set_aside(tmp_path / "record.json").name == "record.failed-2.json"
    assert (tmp_path / "record.failed-1.json").read_text() == "first"
    assert (tmp_path / "record.failed-2.json").read_text() == "second"
    assert not (tmp_path / "record.json").exists()


def test_plan_reads_states_from_the_run_directories(tmp_path):
    runs = spec.load(QUICKSTART, [*TINY, "sweep.seed=[0,1,2,3]"])
    dirs = [run_dir_for(tmp_path, r) for r in runs]
    fake_failed_record(runs[0], dirs[0])
    ok = fake_failed_record(runs[1], dirs[1])
    write_record(dirs[1] / "record.json", {**ok, "status": "diverged"})  # a result, not a failure
    dirs[2].mkdir(parents=True)
    (dirs[2] / "checkpoint.pt").write_bytes(b"")
    fake_failed_record(runs[0], dirs[3])  # another run's record in this folder does not count
    assert [p.state for p in plan(runs, tmp_path)] == ["failed", "done", "interrupted", "new"]
    todo, finished = split(runs, tmp_path, retry_failed=False)
    assert [p.run.seed for p in todo] == [2, 3] and [p.run.seed for p in finished] == [0, 1]


def test_status_shows_every_state_from_manifest_and_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))  # no squeue: job states unknown
    runs = spec.load(QUICKSTART, [*TINY, "sweep.seed=[0,1,2,3]"])
    sweep = tmp_path / "quickstart"
    manifest = Manifest.load(sweep)
    for i, r in enumerate(runs[:3]):
        manifest.add_run(r.label, run_id=r.run_id, spec_hash=r.spec_hash, seed=r.seed, point=r.point, epochs=1)
        manifest.set_job(r.label, f"77_{i}")
    manifest.set_job(runs[0].label, "78_0")
    manifest.save()
    assert Manifest.load(sweep).runs[runs[0].label]["jobs"] == ["77_0", "78_0"]  # every submission kept
    dirs = [run_dir_for(tmp_path, r) for r in runs]
    ok = fake_failed_record(runs[0], dirs[0])
    write_record(dirs[0] / "record.json", {**ok, "status": "ok", "error": None})
    fake_failed_record(runs[1], dirs[1])
    dirs[3].mkdir(parents=True)  # a run not in sweep.json (run locally) that was interrupted
    (dirs[3] / "checkpoint.pt").write_bytes(b"")

    rows, asked = collect(sweep)
    assert not asked
    assert {r.label: r.state for r in rows} == {
        runs[0].label: "done",
        runs[1].label: "failed",
        runs[2].label: "pending",
        runs[3].label: "interrupted",
    }
    assert counts(rows) == "4 run(s): 1 done, 0 running, 1 pending, 1 interrupted, 1 failed"
    assert main(["status", str(tmp_path)]) == 0  # the parent of sweeps works too
    out = capsys.readouterr()
    assert "78_0" in out.out and "squeue is not available" in out.err
    assert main(["status", str(tmp_path / "nope")]) == 2


def test_slurm_settings_are_checked_before_anything_is_submitted(monkeypatch):
    pytest.importorskip("submitit")
    from capsbench.executors.slurm import Settings

    cpu = spec.load(
        QUICKSTART, [*TINY, "executor.partition=gpu", "executor.time_min=90", "executor.mem_gb=0", "executor.cpus=4"]
    )
    s = Settings.from_runs(cpu, jobs=3)
    assert s.parameters == {
        "name": "capsbench-quickstart",
        "timeout_min": 90,
        "cpus_per_task": 4,
        "slurm_partition": "gpu",
        "slurm_array_parallelism": 3,
    }  # device: cpu asks for no GPU; mem_gb 0 leaves memory to the partition's default
    gpu = spec.load(QUICKSTART, [*TINY, "device=auto", "executor.options.slurm_account=lab"])
    s = Settings.from_runs(gpu, jobs=None)
    assert s.parameters["gpus_per_node"] == 1 and s.extra == {"slurm_account": "lab"} and s.wait
    for override, needle in [
        ("executor.options.wait=maybe", "executor.options.wait: expected true or false"),
        ("executor.time_min=0", "executor.time_min: expected an integer >= 1"),  # at spec load
        ("executor.options.poll_s=-1", "executor.options.poll_s: expected seconds > 0"),
    ]:
        with pytest.raises(UserError, match=needle):
            Settings.from_runs(spec.load(QUICKSTART, [*TINY, override]), jobs=None)


def test_slurm_without_slurm_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no squeue
    assert main(["run", QUICKSTART, "--out", str(tmp_path), "--executor", "slurm", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --executor slurm: no SLURM here") and "\n" not in err
    assert not any(tmp_path.rglob("record.json"))


def test_unknown_executor_and_bad_jobs(tmp_path):
    with pytest.raises(UserError, match="unknown executor 'slurn' \\(did you mean 'slurm'"):
        get_executor("slurn")
    with pytest.raises(UserError, match="--jobs: expected an integer >= 1"):
        LocalExecutor(jobs=0).run_all(spec.load(QUICKSTART, TINY), tmp_path)
    assert os.listdir(tmp_path) == []


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find worker processes")
def test_sigterm_to_a_jobs_n_sweep_stops_its_workers_and_exits_130(tmp_path):
    """A `kill` of the sweep process must not leave workers training on as orphans."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "capsbench", "run", QUICKSTART, "--jobs", "2", "--out", str(tmp_path),
           "train.epochs=200", "data.subset=200", "data.test_subset=100", "executor.cpus=1"]
    env = dict(os.environ, CAPSBENCH_MALLOC_TUNING="0", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    workers: list[int] = []
    deadline = time.monotonic() + 120
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        workers = _children(proc.pid)
    assert len(workers) == 2, "the sweep did not start two workers"
    time.sleep(3)  # let them get into training
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "resume" in err.splitlines()[-1]


def test_skip_recorded_leaves_out_runs_with_a_leaderboard_record_even_when_their_folder_is_gone(tmp_path, capsys):
    """A native-numerics run trained again on another CPU is a new result: `--skip-recorded` leaves it to its
    committed record, so a sweep can be finished after a folder was lost (docs/remedies.md, Results)."""
    from capsbench.results import store

    out, board = tmp_path / "runs", tmp_path / "board"
    board.mkdir()
    args = ["run", QUICKSTART, *TINY, "--out", str(out), "--quiet"]
    assert main([*args, "sweep.seed=[0]"]) == 0
    store.add(board, [out / "quickstart"], note="seed 0", log=lambda line: None)
    runs = spec.load(QUICKSTART, [*TINY, "sweep.seed=[0,1]"])
    kept = run_dir_for(out, runs[0])
    shutil.rmtree(kept)  # lost before it was archived; its record stays on the leaderboard
    capsys.readouterr()

    assert main([*args, "sweep.seed=[0,1]", "--skip-recorded", str(board / "records")]) == 0
    assert not kept.exists()  # not trained again
    assert read_record(run_dir_for(out, runs[1]) / "record.json")["status"] == "ok"
    err = capsys.readouterr().err
    left_out = f"1 of 2 runs have a record under {board / 'records'} and are left out ({runs[0].label})"
    assert f"--skip-recorded: {left_out}" in err

    assert main([*args, "sweep.seed=[0]", "--skip-recorded", str(board)]) == 0  # nothing left: nothing to do
    assert not kept.exists()
    from capsbench import api  # the library takes the same path as the CLI

    assert api.run(QUICKSTART, [*TINY, "sweep.seed=[0]"], out, skip_recorded=board) == []
    assert not kept.exists()
    assert [r["seed"] for r in api.run(QUICKSTART, [*TINY, "sweep.seed=[0,1]"], out, skip_recorded=board)] == [1]
    assert main([*args, "--skip-recorded", str(tmp_path / "nowhere")]) == 2
    assert "--skip-recorded: " in capsys.readouterr().err
