"""What capsbench's ``capsbench.plugins`` entry point calls: registers routing ``ida`` lazily.

Lazily (a ``"module:attr"`` string) with its options declared as data, so ``capsbench list`` and
``capsbench validate`` never import torch for it, like the built-in routings.
"""

from __future__ import annotations


def register() -> None:
    from capsbench.registry import ROUTINGS
    from capsbench_ida_routing.options import ACTIVATION  # data only, no torch

    ROUTINGS.register(
        "ida",
        "capsbench_ida_routing.routing:InvertedDotProductRouting",
        options="capsbench_ida_routing.options:IDA",
        about={"activation": ACTIVATION},
    )
