"""How many CPU threads a run may use: the cores this process is given, split between the runs.

torch starts one intra-op and one inter-op thread per core of the *machine*: a container with a
2-core quota on a 64-core host, a SLURM task with 2 of 64 cores, or ``--jobs N`` workers on one
machine would each spin 64 threads. Threads that outnumber the cores they run on wait for one
another at every parallel region (a 6x slower quickstart when one of two cores is busy), so the
default here is never more threads than cores:

- the cores this process may use are the fewest of: its CPU affinity
  (``os.sched_getaffinity``), the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us``, rounded down, at least 1) and SLURM's ``SLURM_CPUS_PER_TASK``;
- each run gets ``min(executor.cpus, usable cores // jobs)`` threads, at least 1:
  ``executor.cpus`` is the spec's per-run core budget (also SLURM's ``--cpus-per-task``);
- ``OMP_NUM_THREADS``, when set, wins (torch reads it itself); inter-op threads are capped to the
  same count.

Example::

    threads = threads_per_run(cpus=4, jobs=2)   # 2 on a 4-core machine, 1 in a container with a 2-core quota
    with torch_threads(threads):                # or apply_threads(threads) for the whole process
        train()
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def affinity_cores() -> int:
    """CPUs this process may be scheduled on (all of the machine's where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _candidates(root: Path, relative: str) -> list[Path]:
    """The cgroup folder of this process and each ancestor up to ``root``: a quota anywhere above applies.

    Inside a container the path in /proc/self/cgroup may not exist under ``root`` (the container's
    own cgroup is mounted as the root); then ``root`` itself is what applies.
    """
    folders = []
    here = root / relative.strip("/") if relative.strip("/") else root
    while True:
        if here.is_dir():
            folders.append(here)
        if here == root or root not in here.parents:
            break
        here = here.parent
    return folders or [root]


def _v2_quota(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")  # "max 100000" (no limit) or "<quota_us> <period_us>"
    if not text:
        return None
    parts = text.split()
    if parts[0] == "max":
        return None
    try:
        quota, period = float(parts[0]), float(parts[1]) if len(parts) > 1 else 100000.0
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = float(quota), float(period)  # quota -1: no limit
    except (TypeError, ValueError):
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The CPU quota of this process's cgroup in cores (e.g. 1.5), or None when there is none.

    cgroup v2: ``/proc/self/cgroup`` has ``0::/path`` and ``<root>/path/cpu.max`` holds the quota.
    cgroup v1: a line ``N:cpu,cpuacct:/path`` (or ``N:cpu:/path``); the quota files live under the
    controller's mount, ``<root>/cpu,cpuacct/path`` or ``<root>/cpu/path``.
    """
    text = _read(proc_cgroup) or ""
    quotas: list[float] = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, relative = fields
        if controllers == "":  # v2 unified hierarchy
            quotas += [q for f in _candidates(root, relative) if (q := _v2_quota(f)) is not None]
        elif "cpu" in controllers.split(","):
            for mount in (controllers, "cpu,cpuacct", "cpu"):
                if (root / mount).is_dir():
                    base = root / mount
                    quotas += [q for f in _candidates(base, relative) if (q := _v1_quota(f)) is not None]
                    break
    return min(quotas) if quotas else None


def slurm_cpus(env: dict | None = None) -> int | None:
    value = (os.environ if env is None else env).get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() and int(value) >= 1 else None


def usable_cores(env: dict | None = None, root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """The cores this process may actually use: affinity, cgroup quota and SLURM's allocation, the fewest."""
    limits = [affinity_cores()]
    quota = cgroup_quota(root, proc_cgroup)
    if quota is not None:
        limits.append(max(1, math.floor(quota)))
    slurm = slurm_cpus(env)
    if slurm is not None:
        limits.append(slurm)
    return max(1, min(limits))


def threads_per_run(cpus: int | None = None, jobs: int = 1, cores: int | None = None) -> int:
    """Threads for each of ``jobs`` runs at once, each asking for at most ``cpus`` (None: no cap)."""
    share = max(1, (usable_cores() if cores is None else cores) // max(1, jobs))
    return max(1, min(share, int(cpus))) if cpus else share


def env_threads(env: dict | None = None) -> int | None:
    """``OMP_NUM_THREADS`` when it is a positive integer (the user's explicit choice), else None."""
    value = (os.environ if env is None else env).get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


def apply_threads(threads: int) -> int:
    """Set torch's intra-op and inter-op threads; ``OMP_NUM_THREADS`` wins. Returns the intra-op count."""
    import torch

    threads = env_threads() or threads
    torch.set_num_threads(threads)
    try:  # allowed only before the first inter-op parallel work of this process
        if torch.get_num_interop_threads() > threads:
            torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass
    return threads


@contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """:func:`apply_threads` for the duration (intra-op threads come back after; inter-op cannot)."""
    import torch

    before = torch.get_num_threads()
    try:
        yield apply_threads(threads)
    finally:
        torch.set_num_threads(before)
