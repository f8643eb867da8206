"""The SLURM executor against a real one-node SLURM cluster on 127.0.0.1 (see slurm_cluster.py).

Scenarios: a sweep through SLURM gives the local sweep's records, and a re-run submits
nothing; a cancelled job resumes from its checkpoint when the command runs again; a
preempted job (SIGUSR2, what submitit asks SLURM to send) is requeued and resumes by
itself; a request the cluster refuses is one line and exit code 2.

Without the SLURM packages (or root) these tests skip with the reason; under CI=true a
cluster that cannot start fails the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from slurm_cluster import ClusterUnavailable, LocalSlurm

from capsbench import spec
from capsbench.executors.local import LocalExecutor
from capsbench.executors.plan import run_dir_for
from capsbench.results.run_record import read_record

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = str(REPO / "specs" / "quickstart.yaml")
SWEEP = [
    "sweep.seed=[0,1]",
    "data.subset=300",
    "data.test_subset=100",
    "train.epochs=2",
    "train.max_steps_per_epoch=4",
]  # 2 depths x 2 seeds = 4 runs of a few seconds
LONG = ["model.depth=1", "data.subset=600", "data.test_subset=100", "train.epochs=6"]  # long enough to stop midway
SLURM = [
    "--executor",
    "slurm",
    "executor.cpus=1",
    "executor.mem_gb=1",
    "executor.time_min=10",
    "executor.options.poll_s=1",
]
VOLATILE = {"timings", "environment", "peak_memory_mb", "checksum", "config", "resumes"}


@pytest.fixture(scope="module")
def cluster():
    slurm = LocalSlurm()
    try:
        slurm.start()
    except ClusterUnavailable as exc:
        shutil.rmtree(slurm.root, ignore_errors=True)
        if os.environ.get("CI") == "true":
            pytest.fail(f"the SLURM test cluster did not start under CI: {exc}")
        pytest.skip(f"no local SLURM cluster: {exc}")
    patch = pytest.MonkeyPatch()
    patch.setenv("SLURM_CONF", str(slurm.conf))  # squeue/scancel/sbatch of this process and its children
    yield slurm
    patch.undo()
    slurm.stop()
    shutil.rmtree(slurm.root, ignore_errors=True)


def cli_env() -> dict:
    # one CPU thread, like this test process: CPU sums then agree to the last bit with the local records
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def capsbench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "capsbench", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=cli_env(),
        timeout=timeout,
    )


def start_capsbench(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "capsbench", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=cli_env(),
    )


def comparable(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in VOLATILE}
    out["config"] = {k: v for k, v in record["config"].items() if k not in ("executor", "output")}
    return out


def wait_for(condition, timeout: float = 180, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        time.sleep(0.02)


def manifest_jobs(sweep_dir: Path) -> dict[str, list[str]]:
    runs = json.loads((sweep_dir / "sweep.json").read_text())["runs"]
    return {label: entry["jobs"] for label, entry in runs.items()}


def all_jobs(cluster: LocalSlurm) -> list[str]:
    """Every job the controller knows, finished ones included (MinJobAge keeps them 5 minutes)."""
    return sorted(cluster.run("squeue", "-h", "-r", "-t", "all", "-o", "%i").stdout.split())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The LONG run trained here in one go: what every interrupted-and-resumed copy must equal."""
    (run,) = spec.load(QUICKSTART, LONG)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (record,) = LocalExecutor(quiet=True).run_all([run], tmp_path_factory.mktemp("uninterrupted"))
    finally:
        torch.set_num_threads(threads)
    assert record["status"] == "ok" and record["resumes"] == []
    return record


def test_sweep_through_slurm_equals_the_local_sweep_and_a_rerun_submits_nothing(cluster, tmp_path):
    runs = spec.load(QUICKSTART, SWEEP)
    assert len(runs) == 4
    local = LocalExecutor(quiet=True).run_all(runs, tmp_path / "local")

    result = capsbench("run", QUICKSTART, "--out", str(tmp_path / "slurm"), *SWEEP, *SLURM)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "submitted 4 run(s) as SLURM job" in result.stderr
    records = [read_record(run_dir_for(tmp_path / "slurm", r) / "record.json") for r in runs]
    assert [r["spec_hash"] for r in records] == [r.spec_hash for r in runs]
    assert [comparable(r) for r in records] == [comparable(r) for r in local]  # metrics to the last bit
    assert [r["resumes"] for r in records] == [[], [], [], []]

    sweep = tmp_path / "slurm" / "quickstart"
    jobs = manifest_jobs(sweep)
    assert sorted(jobs) == sorted(r.label for r in runs)
    arrays = {j[0].split("_")[0] for j in jobs.values()}
    assert len(arrays) == 1 and all(len(j) == 1 for j in jobs.values())  # one job array, one task per run
    status = capsbench("status", str(sweep))
    assert "4 run(s): 4 done, 0 running, 0 pending, 0 interrupted, 0 failed" in status.stdout

    known = all_jobs(cluster)
    mtimes = {p: p.stat().st_mtime_ns for p in sweep.rglob("record.json")}
    scripts = sorted(p.name for p in (sweep / "slurm").glob("*submission*"))
    again = capsbench("run", QUICKSTART, "--out", str(tmp_path / "slurm"), *SWEEP, *SLURM)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to submit: all 4 run(s) have a record" in again.stderr
    assert all_jobs(cluster) == known  # no job reached the controller
    assert sorted(p.name for p in (sweep / "slurm").glob("*submission*")) == scripts
    assert manifest_jobs(sweep) == jobs
    assert {p: p.stat().st_mtime_ns for p in sweep.rglob("record.json")} == mtimes  # never rewritten


def test_cancelled_job_resumes_from_its_checkpoint_when_the_command_runs_again(cluster, tmp_path, uninterrupted):
    (run,) = spec.load(QUICKSTART, LONG)
    run_dir = run_dir_for(tmp_path, run)
    args = ("run", QUICKSTART, "--out", str(tmp_path), *LONG, *SLURM)
    first = start_capsbench(*args)
    try:
        wait_for(lambda: (run_dir / "checkpoint.pt").exists(), what="the first checkpoint")
        (job,) = manifest_jobs(run_dir.parent)[run.label]
        cluster.run("scancel", job)  # SIGTERM: the run stops after its current step
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 1, err[-3000:]
    assert "interrupted" in out and "run the same command again to resume" in out
    assert not (run_dir / "record.json").exists() and (run_dir / "checkpoint.pt").exists()
    status = capsbench("status", str(run_dir.parent))
    assert f"{run.label}  interrupted" in status.stdout and "1 interrupted" in status.stdout

    again = capsbench(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(1 resuming from a checkpoint)" in again.stderr
    record = read_record(run_dir / "record.json")
    assert len(record["resumes"]) == 1 and 1 <= record["resumes"][0] < 6
    assert comparable(record) == comparable(uninterrupted)  # as if never stopped
    assert manifest_jobs(run_dir.parent)[run.label][0] == job and len(manifest_jobs(run_dir.parent)[run.label]) == 2


def test_preempted_job_is_requeued_and_resumes_by_itself(cluster, tmp_path, uninterrupted):
    (run,) = spec.load(QUICKSTART, LONG)
    run_dir = run_dir_for(tmp_path, run)
    args = ("run", QUICKSTART, "--out", str(tmp_path), *LONG, *SLURM)
    first = start_capsbench(*args)
    try:
        wait_for(lambda: (run_dir / "checkpoint.pt").exists(), what="the first checkpoint")
        (job,) = manifest_jobs(run_dir.parent)[run.label]
        # what SLURM sends before the time limit (submitit's --signal=USR2@90) or at preemption
        cluster.run("scancel", "--signal=USR2", job)

        def requeued() -> bool:
            state = cluster.run("squeue", "-h", "-t", "all", "-o", "%T", "-j", job).stdout.strip()
            return state == "PENDING"

        wait_for(requeued, timeout=60, what="the requeue")
        # the same command meanwhile follows the queued job: it never submits a run twice
        follow = capsbench(*args, "executor.options.wait=false")
        assert follow.returncode == 0, follow.stderr[-3000:]
        assert "already queued or running on SLURM: following them, not resubmitting" in follow.stderr
        assert manifest_jobs(run_dir.parent)[run.label] == [job]
        cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now")  # SLURM holds requeued jobs ~2 min
        out, err = first.communicate(timeout=180)
    finally:
        first.kill()
    assert first.returncode == 0, err[-3000:]
    record = read_record(run_dir / "record.json")
    assert record["status"] == "ok"
    assert len(record["resumes"]) == 1 and 1 <= record["resumes"][0] < 6
    assert comparable(record) == comparable(uninterrupted)
    assert "Caught signal SIGUSR2" in (run_dir.parent / "slurm" / f"{job}_0_log.err").read_text()


def test_a_request_the_cluster_refuses_is_one_line_and_exit_2(cluster, tmp_path):
    result = capsbench("run", QUICKSTART, "--out", str(tmp_path), *SWEEP, *SLURM, "executor.cpus=64")
    assert result.returncode == 2
    assert result.stderr.startswith("error: --executor slurm: sbatch refused the job")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("record.json"))
