"""Execution backends: where the runs of a sweep execute.

``get_executor(name)`` is the one place that picks a backend and imports its
dependencies lazily, so ``local`` never needs submitit. An executor never
changes results: the same sweep gives the same records under every backend.
"""

from __future__ import annotations

from capsbench.errors import UserError, did_you_mean

EXECUTORS = {
    "local": "capsbench.executors.local:LocalExecutor",
    "slurm": "capsbench.executors.slurm:SlurmExecutor",
}


def get_executor(name: str, **options):
    """Return an executor instance by name, e.g. ``get_executor("local")``."""
    if name not in EXECUTORS:
        raise UserError(
            f"--executor: unknown executor '{name}'{did_you_mean(name, EXECUTORS)}; "
            f"expected one of: {', '.join(EXECUTORS)}"
        )
    from capsbench.registry import _import

    return _import(EXECUTORS[name])(**options)
