"""Train one run in this process from a payload (see ``plan.payload``): the unit every executor ships.

``python -m capsbench.executors.worker < payload.json`` is what ``local --jobs N``
starts per run; the SLURM task calls :func:`run_payload` directly.
Exit codes: 0 a record was written (whatever its status); 2 bad input (one line on
stderr); 130 interrupted (the last end-of-epoch checkpoint is the resume point).

Example::

    echo '{"config": {...}, "spec_hash": "...", "run_dir": "/abs/runs/quickstart/depth1-seed0-1a2b3c4d"}' \\
        | python -m capsbench.executors.worker
"""

from __future__ import annotations

import json
import os
import sys


def limit_threads() -> int | None:
    """Match torch's CPU threads to what this process was given; return the count set, if any.

    torch starts one thread per core of the machine, not per core of the job: N runs on
    one machine, or a SLURM task with 2 of 64 cores, would oversubscribe the CPUs many
    times over. OMP_NUM_THREADS wins (torch reads it itself); otherwise SLURM's
    SLURM_CPUS_PER_TASK.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if not cpus.isdigit() or int(cpus) < 1:
        return None
    import torch

    torch.set_num_threads(int(cpus))
    return int(cpus)


def run_payload(data: dict, progress: bool = False) -> dict:
    """Train the run a payload describes and return its sealed record (finished runs return at once)."""
    from capsbench.executors.plan import from_payload
    from capsbench.train.runner import run

    spec, run_dir = from_payload(data)
    return run(spec.config, run_dir, spec_hash=spec.spec_hash, progress=progress)


def main() -> int:
    from capsbench.errors import UserError

    try:
        data = json.loads(sys.stdin.read())
        limit_threads()
        record = run_payload(data)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished epochs are saved in checkpoint.pt", file=sys.stderr)
        return 130
    print(f"{record.get('run_id')}: {record.get('status')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
