"""The options of the built-in routings, declared as data (no torch import).

``capsbench validate`` and spec loading check ``model.routing_options`` against these
declarations through the registry (``capsbench.registry``: the lazy ``_BUILTINS`` entry of
each routing names its table here), so a typo such as ``final_lamda`` is caught before any
data loads, without importing torch. Each routing class carries the same table as its
``OPTIONS`` attribute and resolves its keyword options with it, so the declaration the
validator reads is the one the constructor uses.
"""

from __future__ import annotations

from capsbench.options import Option

NORMALISATIONS = ("parents", "receiving_parents")  # the axes coefficients may be normalised over
COSTS = ("sum", "mean", "standardise")  # EM's cost reductions
LOG_DETS = ("diagonal", "wishart")  # VB's log-determinant of the parent precision
COEFFICIENTS = ("routed", "uniform")  # "uniform": the control arm, coefficients frozen at their start
INITIAL_COEFFICIENTS = ("uniform", "one")  # EM's first R: 1/J (capsbench) or 1 (SR-CapsNet)
LAMBDA_SCHEDULES = ("openreview", "fixed")  # EM's inverse temperature per iteration

_COEFFICIENTS = Option(
    str, "routed", choices=COEFFICIENTS,
    doc="uniform: the coefficients stay at their uniform start, everything else as routed (control arm)",
)

EM = {
    "final_lambda": Option(
        float, None, gt=0, nullable=True,
        doc="inverse temperature of the last iteration; null = by cost (sum 0.01, mean 1.44, standardise 0.01)",
    ),
    "min_var": Option(float, 5e-4, gt=0, doc="floor of the parent variances"),
    "normalise": Option(str, "parents", choices=NORMALISATIONS, doc="axis the coefficients sum to 1 over"),
    "cost": Option(str, "sum", choices=COSTS, doc="reduction of the per-dimension cost"),
    "coefficients": _COEFFICIENTS,
    "renormalise": Option(bool, False, doc="yl-1993: R * a renormalised over parents (cancels a_i)"),
    "initial_coefficients": Option(
        str, "uniform", choices=INITIAL_COEFFICIENTS, doc="first R: uniform 1/J, or 1 (SR-CapsNet)"
    ),
    "lambda_schedule": Option(
        str, "openreview", choices=LAMBDA_SCHEDULES,
        doc="openreview: final_lambda * (1 - 0.95^(t+1)); fixed: final_lambda at every iteration (yl-1993)",
    ),
}

VB = {
    "alpha0": Option(float, 1.0, gt=0, doc="Dirichlet prior of the mixing coefficients"),
    "kappa0": Option(float, 1.0, gt=0, doc="scale of the Gaussian prior on parent means"),
    "nu0": Option(
        float, None, gt=0, nullable=True,
        doc="Wishart degrees of freedom; null = pose_dim + 1 (log_det wishart needs > pose_dim - 1)",
    ),
    "psi0": Option(float, 1.0, gt=0, doc="Wishart scale (times identity)"),
    "m0": Option(float, 0.0, doc="prior mean of parent poses"),
    "normalise": Option(str, "receiving_parents", choices=NORMALISATIONS, doc="axis the coefficients sum to 1 over"),
    "activation_bn": Option(bool, True, doc="non-affine BatchNorm on the activation logits (reference)"),
    "pose_bn": Option(bool, True, doc="non-affine BatchNorm on the parent poses (reference)"),
    "log_det": Option(str, "diagonal", choices=LOG_DETS, doc="log-determinant of the parent precision"),
    "bn_momentum": Option(float, 0.1, ge=0, le=1, doc="momentum of both BatchNorms' running statistics"),
    "coefficients": _COEFFICIENTS,
}

SELF = {
    "eps": Option(float, 1e-12, gt=0, doc="added to the summed activations before dividing"),
    "coefficients": _COEFFICIENTS,
}

DYNAMIC = {
    "eps": Option(float, 1e-8, gt=0, doc="added to squared lengths inside the squash"),
    "detach_agreement": Option(bool, False, doc="no gradient through the agreement updates"),
    "coefficients": _COEFFICIENTS,
}

UNIFORM = {
    "eps": Option(float, 1e-12, gt=0, doc="added to the summed activations before dividing"),
}

