"""Routing methods: one module per method, all behind the ``Routing`` interface.

The methods register lazily in ``capsbench.registry.ROUTINGS`` (``em``, ``vb``, ``self``,
``dynamic``); import them through the registry, not from here, so listing names never
imports every method::

    from capsbench.registry import ROUTINGS
    SelfRouting = ROUTINGS.get("self")

The interface below is exported lazily: ``declared_options`` (read by ``capsbench validate``)
sits in this package and must import without torch.
"""

from __future__ import annotations

from capsbench._lazy import lazy_exports

EXPORTS = {
    "IDENTITY_GEOMETRY": "capsbench.capsules.routing.base:IDENTITY_GEOMETRY",
    "Geometry": "capsbench.capsules.routing.base:Geometry",
    "Routing": "capsbench.capsules.routing.base:Routing",
    "RoutingOutput": "capsbench.capsules.routing.base:RoutingOutput",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
