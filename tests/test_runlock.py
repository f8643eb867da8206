"""One process trains a run at a time: flock and lease locks, with real processes holding them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import REPO, capsbench

from capsbench import runlock, spec
from capsbench.errors import UserError
from capsbench.executors.plan import run_dir_for
from capsbench.executors.status import collect
from capsbench.runlock import RunBusy, run_lock

HOLD = """
import sys, time
from capsbench.runlock import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holders():
    """Start processes that hold a run's lock; every one still alive is killed (by pid) at the end."""
    started: list[subprocess.Popen] = []

    def hold(directory: Path, mode: str = "flock", **env) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(directory)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, CAPSBENCH_RUN_LOCK=mode, **env),
        )
        started.append(proc)
        assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
        return proc

    yield hold
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.fixture(params=["flock", "lease"])
def mode(request, monkeypatch):
    monkeypatch.setenv("CAPSBENCH_RUN_LOCK", request.param)
    return request.param


def test_a_held_run_is_busy_and_a_kill_9_releases_it(holders, mode, tmp_path):
    run_dir = tmp_path / "run"
    holder = holders(run_dir, mode)
    with pytest.raises(RunBusy, match=rf"{run_dir}: in progress in another process \(pid {holder.pid} on "):
        with run_lock(run_dir):
            pass
    assert runlock.holder(run_dir).startswith(f"pid {holder.pid} on {socket.gethostname()}")
    kill9(holder)  # flock: the kernel lets go; lease: the same host sees its process is gone
    assert runlock.holder(run_dir) is None
    with run_lock(run_dir):
        assert runlock.holder(run_dir) is not None
    assert runlock.holder(run_dir) is None and sorted(run_dir.iterdir()) == []  # no lock file left behind


def test_a_lease_lives_by_its_heartbeat_and_expires_without_it(holders, monkeypatch, tmp_path):
    monkeypatch.setenv("CAPSBENCH_RUN_LOCK", "lease")
    run_dir = tmp_path / "run"
    holder = holders(run_dir, "lease", CAPSBENCH_LEASE_TTL_S="2")
    lease = run_dir / runlock.LEASE_FILE
    info = json.loads(lease.read_text())
    assert info["pid"] == holder.pid and info["ttl_s"] == 2.0
    # the holder touches its lease every ttl/4: set it back and watch it come forward again
    os.utime(lease, (time.time() - 1.5, time.time() - 1.5))
    deadline = time.monotonic() + 60
    while time.time() - lease.stat().st_mtime > 1.0:
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.05)
    # a stopped holder (alive, same host) no longer beats: once a whole TTL has gone by, the lease is free
    holder.send_signal(signal.SIGSTOP)
    time.sleep(0.5)  # let the stop land: no heartbeat after this
    os.utime(lease)  # its last beat was just now: still its lease, however slowly this machine runs
    with pytest.raises(RunBusy):
        with run_lock(run_dir):
            pass
    os.utime(lease, (time.time() - 3, time.time() - 3))
    with run_lock(run_dir):
        assert json.loads(lease.read_text())["pid"] == os.getpid()
    assert not lease.exists()


def test_a_lease_of_another_node_expires_after_its_ttl(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPSBENCH_RUN_LOCK", "lease")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lease = run_dir / runlock.LEASE_FILE
    lease.write_text(json.dumps({"host": "node-that-crashed", "pid": 1, "token": "x", "ttl_s": 60, "since": "01:00"}))
    with pytest.raises(RunBusy, match="pid 1 on node-that-crashed"):  # fresh: its node may still be training
        with run_lock(run_dir):
            pass
    os.utime(lease, (time.time() - 61, time.time() - 61))
    with run_lock(run_dir):
        assert json.loads(lease.read_text())["host"] == socket.gethostname()
    assert sorted(run_dir.iterdir()) == []


def test_lock_kind_from_the_file_system_or_the_environment(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "40 22 0:50 / /shared rw - nfs4 server:/export rw\n"
        "41 22 0:51 / /shared/scratch\\040space rw - lustre mds@tcp:/fs rw\n"
    )
    assert runlock.fs_type(Path("/data/me/runs"), mountinfo) == "ext4"
    assert runlock.fs_type(Path("/shared/runs"), mountinfo) == "nfs4"
    assert runlock.fs_type(Path("/shared/scratch space/runs"), mountinfo) == "lustre"
    assert runlock.fs_type(Path("/sharedx/runs"), mountinfo) == "ext4"
    assert runlock.lock_mode(tmp_path, {"CAPSBENCH_RUN_LOCK": "lease"}) == "lease"
    assert runlock.lock_mode(tmp_path, {"CAPSBENCH_RUN_LOCK": "flock"}) == "flock"
    with pytest.raises(UserError, match="CAPSBENCH_RUN_LOCK: expected one of auto, flock, lease, got 'nfs'"):
        runlock.lock_mode(tmp_path, {"CAPSBENCH_RUN_LOCK": "nfs"})
    with pytest.raises(UserError, match="CAPSBENCH_LEASE_TTL_S: expected seconds > 0"):
        runlock.lease_ttl({"CAPSBENCH_LEASE_TTL_S": "0"})


def test_status_shows_a_run_in_progress_as_running(holders, mode, tmp_path):
    sweep = tmp_path / "sweep"
    run_dir = sweep / "depth1-seed0-abc"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: x\n")
    holder = holders(run_dir, mode)
    rows, _ = collect(sweep)
    assert [(r.state, r.detail.split(" on ")[0]) for r in rows] == [("running", f"pid {holder.pid}")]
    kill9(holder)
    rows, _ = collect(sweep)
    assert [r.state for r in rows] == ["interrupted"]


QUICK = ["train.epochs=1", "data.subset=200", "data.test_subset=100"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_second_command_skips_the_run_in_progress_and_finishes_the_others(holders, tmp_path, jobs):
    spec_file = REPO / "specs" / "quickstart.yaml"
    out = tmp_path / "runs"
    depth1, depth3 = (run_dir_for(out, run) for run in spec.load(spec_file, QUICK))
    holder = holders(depth3)  # another `capsbench run` is training depth 3
    result = capsbench("run", str(spec_file), *QUICK, "--out", str(out), "--quiet", "--jobs", str(jobs))
    assert result.returncode == 75, result.stderr[-2000:]
    busy = [line for line in result.stderr.splitlines() if "in progress in another process" in line]
    assert len(busy) == 1 and str(depth3) in busy[0] and f"pid {holder.pid}" in busy[0], result.stderr
    assert json.loads((depth1 / "record.json").read_text())["status"] == "ok"
    assert sorted(p.name for p in depth3.iterdir()) == [".lock"]  # nothing of the holder's run was touched
    assert "running" in result.stdout  # the results table shows it


def test_exit_code_of_a_command_that_skipped_runs():
    from capsbench.cli import run_exit_code

    assert run_exit_code(["ok", "ok"]) == 0
    assert run_exit_code(["ok", "running"]) == 75  # the rest is another process's: try again later
    assert run_exit_code(["failed", "running"]) == 1  # a failure says more than a skip
    assert run_exit_code(["diverged"]) == 1
