"""Train one run in this process from a payload (see ``plan.payload``): the unit every executor ships.

``python -m capsbench.executors.worker < payload.json`` is what ``local --jobs N``
starts per run; the SLURM task calls :func:`run_payload` directly.
Exit codes: 0 a record was written (whatever its status); 2 bad input (one line on
stderr); 75 another process is training this run, skipped (``capsbench.runlock``); 130
interrupted (the last end-of-epoch checkpoint is the resume point).

Example::

    echo '{"config": {...}, "spec_hash": "...", "run_dir": "/abs/runs/quickstart/depth1-seed0-1a2b3c4d"}' \\
        | python -m capsbench.executors.worker
"""

from __future__ import annotations

import json
import sys


def limit_threads(data: dict) -> int:
    """Set torch's CPU threads for the run a payload describes (see :mod:`capsbench.cpus`); return the count.

    ``OMP_NUM_THREADS`` wins (``local --jobs N`` sets it to each worker's share); otherwise the run's
    ``executor.cpus``, capped by the cores this process may use (affinity, cgroup quota, SLURM's
    ``SLURM_CPUS_PER_TASK``).
    """
    from capsbench.cpus import apply_threads, threads_per_run

    cpus = ((data.get("config") or {}).get("executor") or {}).get("cpus")
    return apply_threads(threads_per_run(cpus))


def run_payload(data: dict, progress: bool = False) -> dict:
    """Train the run a payload describes and return its sealed record (finished runs return at once)."""
    from capsbench.executors.plan import from_payload
    from capsbench.train.runner import run

    spec, run_dir = from_payload(data)
    return run(spec.config, run_dir, spec_hash=spec.spec_hash, progress=progress)


def main() -> int:
    from capsbench.errors import UserError
    from capsbench.runlock import EXIT_BUSY, RunBusy

    try:
        data = json.loads(sys.stdin.read())
        limit_threads(data)
        record = run_payload(data)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunBusy as busy:  # another process is training this run: not a failure of this one
        print(f"busy: {busy}", file=sys.stderr)
        return EXIT_BUSY
    except KeyboardInterrupt:
        print("interrupted: finished epochs are saved in checkpoint.pt", file=sys.stderr)
        return 130
    print(f"{record.get('run_id')}: {record.get('status')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
