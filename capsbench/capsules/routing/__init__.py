"""Routing methods: one module per method, all behind the ``Routing`` interface.

The methods register lazily in ``capsbench.registry.ROUTINGS`` (``em``, ``vb``, ``self``,
``dynamic``); import them through the registry, not from here, so listing names never
imports every method::

    from capsbench.registry import ROUTINGS
    SelfRouting = ROUTINGS.get("self")
"""

from capsbench.capsules.routing.base import IDENTITY_GEOMETRY, Geometry, Routing, RoutingOutput

__all__ = ["IDENTITY_GEOMETRY", "Geometry", "Routing", "RoutingOutput"]
