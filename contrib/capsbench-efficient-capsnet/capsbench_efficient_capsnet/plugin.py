"""Called by capsbench's ``capsbench.plugins`` entry point: registers routing ``efficient`` lazily,
with its options declared as data (``capsbench list``/``validate`` import no torch for it)."""

from __future__ import annotations


def register() -> None:
    from capsbench.registry import ROUTINGS

    ROUTINGS.register(
        "efficient",
        "capsbench_efficient_capsnet.routing:SelfAttentionRouting",
        options="capsbench_efficient_capsnet.options:EFFICIENT",
    )
