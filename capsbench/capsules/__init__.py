"""The capsule component library: capsules, layers and routing methods.

Public components, imported on first use so ``import capsbench.capsules`` stays free of torch::

    from capsbench.capsules import Capsules, ConvCaps, ClassCaps, PrimaryCaps

    layer = ConvCaps(in_types=8, out_types=8, kernel_size=3, stride=1, padding=1, routing="em")
    out = layer(Capsules(pose, activation))   # pose [N, 8, 16, H, W], activation [N, 8, H, W]
"""

from __future__ import annotations

from capsbench._lazy import lazy_exports

EXPORTS = {
    "Capsules": "capsbench.capsules.types:Capsules",
    "CapsuleLayer": "capsbench.capsules.layers:CapsuleLayer",
    "PrimaryCaps": "capsbench.capsules.layers:PrimaryCaps",
    "ConvCaps": "capsbench.capsules.layers:ConvCaps",
    "ClassCaps": "capsbench.capsules.layers:ClassCaps",
    "Routing": "capsbench.capsules.routing.base:Routing",
    "RoutingOutput": "capsbench.capsules.routing.base:RoutingOutput",
    "Geometry": "capsbench.capsules.routing.base:Geometry",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
