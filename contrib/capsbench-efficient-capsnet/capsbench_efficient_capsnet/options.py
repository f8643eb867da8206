"""The options of routing ``efficient``, as data (no torch: ``capsbench validate`` reads them)."""

from __future__ import annotations

from capsbench.options import Option

EFFICIENT = {
    "log_prior": Option(bool, True, doc="the learned log prior B added to the coefficients (paper); false: none"),
    "coefficients": Option(
        str, "routed", choices=("routed", "uniform"),
        doc="uniform: the coefficients stay at 1/J, everything else as routed (control arm)",
    ),
}
