"""Baselines registered through the same entry-point plugin path an outside package uses."""


def register() -> None:
    """Entry point of the ``capsbench.plugins`` group: registers the baseline models."""
