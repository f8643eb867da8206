"""Training: the runner, losses, optimisers and schedules.

``from capsbench.train import run`` is lazy, so importing a loss through the
registry does not pull in the whole runner.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name == "run":
        from capsbench.train.runner import run

        return run
    raise AttributeError(f"module 'capsbench.train' has no attribute {name!r}")


__all__ = ["run"]
