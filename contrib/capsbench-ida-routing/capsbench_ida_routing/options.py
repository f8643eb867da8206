"""The options of routing ``ida`` and the definition of the activation capsbench measures, as data.

No torch here: ``capsbench validate`` and ``capsbench list`` read this module without importing
the routing.
"""

from __future__ import annotations

from capsbench.options import Option

IDA = {
    "layer_norm_eps": Option(float, 1e-5, gt=0, doc="epsilon of the LayerNorm on parent poses (torch's default)"),
    "affine": Option(bool, True, doc="the LayerNorm learns a scale and shift per pose entry (nn.LayerNorm's default)"),
    "eps": Option(float, 1e-12, gt=0, doc="added to the summed child activations of the measured activation"),
    "coefficients": Option(
        str, "routed", choices=("routed", "uniform"),
        doc="uniform: the coefficients stay at their uniform start, everything else as routed (control arm)",
    ),
}

# The method has no activation of its own; this is the one capsbench measures (and counts dead),
# shown beside the method in the leaderboard tables.
ACTIVATION = (
    "capsbench's definition (the method has none): the parent's share of its window's routing mass, "
    "a_j = sum_i a_i r_ij / sum_i a_i, in [0, 1], summing to 1 over the parent types of a position; "
    "dead (<= 0.01) = the active children send at most 1% of their mass to it (fair share 1/J)"
)
