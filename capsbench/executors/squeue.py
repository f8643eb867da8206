"""Job states from ``squeue`` (no accounting database needed, unlike ``sacct``).

Example::

    states = job_states(["1234_0", "1234_1"])   # {"1234_0": ("RUNNING", "None"), ...}; None if squeue failed
    is_live(states.get("1234_0"))
"""

from __future__ import annotations

import shutil
import subprocess

# States in which a job still holds, or waits for, a place on the cluster. Everything else
# (COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, PREEMPTED, OUT_OF_MEMORY, ...) has ended.
RUNNING = ("RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING")
WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "STOPPED", "RESV_DEL_HOLD")
LIVE = RUNNING + WAITING


def available() -> bool:
    return shutil.which("squeue") is not None


def job_states(job_ids: list[str], timeout: float = 60) -> dict[str, tuple[str, str]] | None:
    """``{job id: (state, reason)}`` for the jobs SLURM still knows; None when squeue is missing or fails.

    Array elements come one per line (``-r``) as ``<array id>_<index>``; ``-t all``
    includes jobs that ended recently, so their final state can be shown.
    """
    ids = sorted({str(j) for j in job_ids if j})
    if not ids or not available():
        return {} if ids == [] else None
    # asking for the array ids returns every element; one call for all of them
    base = sorted({j.split("_")[0] for j in ids})
    try:
        result = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(base)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:  # every id has left the controller's memory
            return {}
        return None
    states = {}
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2:
            states[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return states


def is_live(state: tuple[str, str] | None) -> bool:
    return state is not None and state[0] in LIVE


def is_running(state: tuple[str, str] | None) -> bool:
    return state is not None and state[0] in RUNNING
