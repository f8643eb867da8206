"""Find the capsule layers of a model, in order, with their names and kinds.

A model exposes them as ``model.capsule_layers`` (a ModuleList of layers that
carry ``name`` and ``kind``, or a ModuleDict name -> layer). Without that
attribute, every ``capsbench.capsules.layers.CapsuleLayer`` submodule counts.

Example::

    for layer in capsule_layers(model):
        print(layer.name, layer.kind)      # primary primary / conv1 conv / class class
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from torch import nn


class LayerInfo(NamedTuple):
    name: str
    kind: str  # "primary" | "conv" | "class" (or whatever a plugin layer declares)
    module: nn.Module


def capsule_layers(model: nn.Module) -> list[LayerInfo]:
    """The capsule layers of ``model`` in forward order (empty when it has none)."""
    declared = getattr(model, "capsule_layers", None)
    if declared is not None:
        items = (
            declared.items()
            if isinstance(declared, Mapping | nn.ModuleDict)
            else ((getattr(m, "name", str(i)), m) for i, m in enumerate(declared))
        )
        layers = [LayerInfo(str(getattr(m, "name", key)), str(getattr(m, "kind", "other")), m) for key, m in items]
    else:
        layers = _marked_layers(model)
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise ValueError(f"capsule layer names must be unique, got {names}")
    return layers


def telemetry_blocks(model: nn.Module) -> list[LayerInfo]:
    """Non-capsule blocks a model declares as ``model.telemetry_blocks`` (e.g. a ResNet's blocks).

    Only gradient norms observe them; activation telemetry stays on capsule layers.
    """
    declared = getattr(model, "telemetry_blocks", None) or []
    items = declared.items() if isinstance(declared, Mapping | nn.ModuleDict) else enumerate(declared)
    return [LayerInfo(str(getattr(m, "name", key)), str(getattr(m, "kind", "block")), m) for key, m in items]


def _marked_layers(model: nn.Module) -> list[LayerInfo]:
    try:  # imported here: the layer library is optional for telemetry
        from capsbench.capsules.layers import CapsuleLayer
    except ImportError:
        return []
    return [
        LayerInfo(str(getattr(m, "name", qualname)), str(getattr(m, "kind", "other")), m)
        for qualname, m in model.named_modules()
        if isinstance(m, CapsuleLayer)
    ]
