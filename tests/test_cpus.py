"""CPU threads: the cores a process may use (affinity, cgroup v1/v2 quota, SLURM) and how runs split them.

Fake /sys/fs/cgroup trees and /proc/self/cgroup files stand in for the machine's; nothing here times anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from capsbench import cpus
from capsbench.executors.worker import limit_threads


def cgroup_tree(tmp_path: Path, proc_lines: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    root.mkdir()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(proc_lines)
    return root, proc


@pytest.mark.parametrize(
    ("cpu_max", "quota"),
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("200000 100000\n", 2.0), ("50000 100000\n", 0.5)],
)
def test_cgroup_v2_cpu_max(tmp_path, cpu_max, quota):
    root, proc = cgroup_tree(tmp_path, "0::/user.slice/job\n", {"user.slice/job/cpu.max": cpu_max})
    assert cpus.cgroup_quota(root, proc) == quota


def test_cgroup_v2_quota_of_an_ancestor_applies_and_the_lowest_wins(tmp_path):
    root, proc = cgroup_tree(
        tmp_path, "0::/a/b\n", {"a/cpu.max": "300000 100000", "a/b/cpu.max": "max 100000", "cpu.max": "max 100000"}
    )
    assert cpus.cgroup_quota(root, proc) == 3.0
    (root / "a" / "b" / "cpu.max").write_text("100000 100000")
    assert cpus.cgroup_quota(root, proc) == 1.0


def test_cgroup_v2_inside_a_container_reads_the_root(tmp_path):
    # the path in /proc/self/cgroup belongs to the host: the container sees its own cgroup as the root
    root, proc = cgroup_tree(tmp_path, "0::/docker/abc123\n", {"cpu.max": "250000 100000"})
    assert cpus.cgroup_quota(root, proc) == 2.5


@pytest.mark.parametrize("mount", ["cpu,cpuacct", "cpu"])
def test_cgroup_v1_cfs_quota(tmp_path, mount):
    line = f"4:{mount}:/slurm/job42\n" if mount != "cpu" else "3:cpu:/slurm/job42\n2:cpuacct:/slurm/job42\n"
    root, proc = cgroup_tree(
        tmp_path,
        "9:memory:/slurm/job42\n" + line,
        {f"{mount}/slurm/job42/cpu.cfs_quota_us": "200000\n", f"{mount}/slurm/job42/cpu.cfs_period_us": "100000\n"},
    )
    assert cpus.cgroup_quota(root, proc) == 2.0
    (root / mount / "slurm" / "job42" / "cpu.cfs_quota_us").write_text("-1\n")  # -1: no limit
    assert cpus.cgroup_quota(root, proc) is None


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert cpus.cgroup_quota(tmp_path / "none", tmp_path / "missing") is None
    root, proc = cgroup_tree(tmp_path, "0::/\n", {"cpu.max": "garbage"})
    assert cpus.cgroup_quota(root, proc) is None


def test_usable_cores_is_the_fewest_of_affinity_quota_and_slurm(tmp_path, monkeypatch):
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: set(range(64)))
    root, proc = cgroup_tree(tmp_path, "0::/\n", {"cpu.max": "max 100000"})
    assert cpus.usable_cores({}, root, proc) == 64
    (root / "cpu.max").write_text("250000 100000")  # 2.5 cores of quota: 2 threads keep up, 3 would wait
    assert cpus.usable_cores({}, root, proc) == 2
    (root / "cpu.max").write_text("50000 100000")  # half a core: still one thread
    assert cpus.usable_cores({}, root, proc) == 1
    (root / "cpu.max").write_text("max 100000")
    assert cpus.usable_cores({"SLURM_CPUS_PER_TASK": "4"}, root, proc) == 4
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert cpus.usable_cores({"SLURM_CPUS_PER_TASK": "4"}, root, proc) == 3


@pytest.mark.parametrize(
    ("cpus_per_run", "jobs", "cores", "threads"),
    [(None, 1, 8, 8), (4, 1, 8, 4), (4, 3, 8, 2), (1, 1, 8, 1), (64, 1, 2, 2), (None, 4, 2, 1), (None, 2, 2, 1)],
)
def test_threads_per_run_never_exceed_the_cores(cpus_per_run, jobs, cores, threads):
    assert cpus.threads_per_run(cpus_per_run, jobs, cores) == threads
    assert threads * min(jobs, cores) <= cores


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(cpus, "usable_cores", lambda env=None: 2)


def test_worker_threads_follow_executor_cpus_capped_by_the_cores(two_cores):
    assert limit_threads({"config": {"executor": {"cpus": 1}}}) == 1 and torch.get_num_threads() == 1
    assert limit_threads({"config": {"executor": {"cpus": 64}}}) == 2 and torch.get_num_threads() == 2


def test_omp_num_threads_wins(two_cores, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpus.apply_threads(2) == 1 and torch.get_num_threads() == 1


def test_in_process_runs_get_their_executor_cpus(two_cores, monkeypatch, tmp_path):
    """`capsbench run` (one run at a time, in this process) trains with min(executor.cpus, cores) threads."""
    from capsbench import spec
    from capsbench.executors.local import LocalExecutor
    from capsbench.train import runner

    seen = []

    def fake_run(cfg, run_dir, *, spec_hash, progress):
        seen.append(torch.get_num_threads())
        return {"status": "ok"}

    monkeypatch.setattr(runner, "run", fake_run)
    quickstart = Path(__file__).resolve().parent.parent / "specs" / "quickstart.yaml"
    for cpus_per_run, expected in (("1", 1), ("8", 2)):
        seen.clear()
        runs = spec.load(quickstart, [f"executor.cpus={cpus_per_run}"])
        LocalExecutor(quiet=True).run_all(runs, tmp_path)
        assert seen == [expected] * len(runs)
