"""The arm a run belongs to (default, the uniform-coefficient control, or the routing options it sets), by name.

One naming for every view that tells a routing's arms apart: the pre-registered questions of the long-cpu protocol
(``capsbench.report.questions``) and the remedies view (``capsbench.report.remedies_view``).

    >>> arm_of({"routing_options": {"coefficients": "uniform"}}), arm_of({"routing_options": {"renormalise": True}})
    ('control (uniform coefficients)', 'renormalise=True')
"""

from __future__ import annotations

DEFAULT_ARM = "default"
CONTROL_ARM = "control (uniform coefficients)"


def arm_of(model: dict) -> str:
    """The arm a run belongs to, from its resolved model config: default, the control, or the options set."""
    options = {k: v for k, v in sorted((model.get("routing_options") or {}).items())}
    control = options.pop("coefficients", "routed") == "uniform"
    parts = [f"{k}={v}" for k, v in options.items()]
    if model.get("pose_norm") is not None:
        parts.append(f"pose_norm={model['pose_norm']}")
    if control:
        return CONTROL_ARM + (f" + {', '.join(parts)}" if parts else "")
    return ", ".join(parts) or DEFAULT_ARM
