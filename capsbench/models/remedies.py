"""The remedies for vanishing activations at depth: one table, as plain data (no torch).

A remedy is a model option that departs from a routing's reference to keep capsules alive in deep
stacks. Each row names its config key, the value that switches it off (the reference behaviour;
that value is in ``config.HASH_NEUTRAL_DEFAULTS`` where the key is newer than the records, so
existing spec hashes do not move), its source, and a short label for tables. ``requires`` lists
``(key, value)`` pairs the remedy needs, and ``routing_attribute`` a routing class attribute and
the value it must have; both are checked once, at spec load (``check_remedies``), with one-line
errors. What each remedy computes is documented where it is built (``capsbench/models/capsnet.py``,
``capsbench/capsules/layers.py``, ``capsbench/models/length_init.py``) and in ``docs/remedies.md``.

``remedy_label(config)`` names the remedies a resolved config has on, e.g. ``"res+skip=pre"``,
``"pose-norm+norm=layer"``, ``"init=length"``; ``"none"`` when every remedy is off. A value
``True`` prints as the label, ``False`` as ``no-<label>``, any other value as ``<label>=<value>``.

Example::

    remedy_label({"model": {"routing": "dynamic", "residual": True, "residual_style": "pre"}})  # 'res+skip=pre'
    remedy_label({"model": {"routing": "em"}})                                                # 'none'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capsbench.errors import SpecError


@dataclass(frozen=True)
class Remedy:
    name: str  # what it is called in docs and tables
    key: str  # its config key (dotted)
    off: Any  # the value that switches it off: the reference behaviour
    source: str  # where it comes from
    label: str  # short label in the remedies view
    requires: tuple[tuple[str, Any], ...] = ()  # (key, value) pairs it needs, checked at spec load
    routing_attribute: tuple[str, Any] | None = None  # (class attribute, value) its routing must have


REMEDIES: tuple[Remedy, ...] = (
    Remedy(
        name="residual skips",
        key="model.residual",
        off=False,
        source="res-capsnet (Gugglberger et al. 2021, skip_dist = 2): layer i adds layer i-2's routed output",
        label="res",
    ),
    Remedy(
        name="pre-activation residual skips",
        key="model.residual_style",
        off="post",
        source="He et al. 2016 (identity mappings, pre-activation ResNet), adapted to capsules by capsbench: "
               "an unnormalised identity stream, the pose norm moved in front of each routed layer",
        label="skip",
        requires=(("model.residual", True),),
    ),
    Remedy(
        name="pose normalisation",
        key="model.pose_norm",
        off=None,
        source="SR-CapsNet and the EM ports: BatchNorm of poses after every stacked layer "
               "(null = the routing's reference)",
        label="pose-norm",
    ),
    Remedy(
        name="LayerNorm of poses",
        key="model.pose_norm_kind",
        off="batch",
        source="Tsai et al. 2020 (inverted dot-product attention routing): LayerNorm over each capsule's pose",
        label="norm",
        requires=(("model.pose_norm", True),),
    ),
    Remedy(
        name="reversible momentum residual blocks",
        key="model.momentum_residual",
        off=None,
        source="MoCapsNet (Gugglberger, Peer and Rodriguez-Sanchez 2022; Sander et al. 2021's momentum residual "
               "blocks), over conv2..convN (capsbench/models/momentum.py)",
        label="momentum",
    ),
    Remedy(
        name="length-preserving initialisation",
        key="model.init",
        off="default",
        source="capsbench: vote weights scaled so the squash maps a capsule length of 0.7 to itself "
               "(capsbench/models/length_init.py)",
        label="init",
        routing_attribute=("primary_activation", "length"),
    ),
)


def _get(config: Any, dotted: str, default: Any) -> Any:
    node = config
    for part in dotted.split("."):
        try:
            node = node[part] if part in node else default
        except TypeError:
            return default
        if node is default:
            return default
    return node


def remedy_text(remedy: Remedy, value: Any) -> str:
    if value is True:
        return remedy.label
    if value is False:
        return f"no-{remedy.label}"
    return f"{remedy.label}={value}"


def remedy_label(config: Any) -> str:
    """The remedies ``config`` (a resolved config: plain mapping or DictConfig) has on, '+'-joined; 'none' if none.

    A key the config lacks counts as off (records written before the key existed).
    """
    on = [remedy_text(r, value) for r in REMEDIES if (value := _get(config, r.key, r.off)) != r.off]
    return "+".join(on) or "none"


def added_remedies(config: Any) -> str:
    """The remedies ``config`` adds, '+'-joined ('' for none). Switching a part of the method's reference off
    (``no-...``: EM without its pose BatchNorm, a long-cpu variant) removes rather than adds, so it is a variant
    of the method, not a remedy: the long-cpu questions ask about it and the remedies verdicts leave it out."""
    return "+".join(p for p in remedy_label(config).split("+") if p != "none" and not p.startswith("no-"))


def check_remedies(cfg: Any) -> None:
    """Every remedy that is on against what it requires; SpecError naming the key otherwise (spec load)."""
    for remedy in REMEDIES:
        value = _get(cfg, remedy.key, remedy.off)
        if value == remedy.off:
            continue
        for key, needed in remedy.requires:
            have = _get(cfg, key, None)
            if have != needed:
                raise SpecError(
                    f"{remedy.key}: {value!r} ({remedy.name}) needs {key}: {_yaml(needed)}, got {_yaml(have)}"
                )
        if remedy.routing_attribute is not None and _get(cfg, "model.arch", "capsnet") == "capsnet":
            _check_routing(cfg, remedy, value)


def _check_routing(cfg: Any, remedy: Remedy, value: Any) -> None:
    from capsbench.registry import ROUTINGS  # imports the routing (and torch) only when this remedy is on

    attribute, needed = remedy.routing_attribute
    routing = _get(cfg, "model.routing", None)
    if getattr(ROUTINGS.get(routing), attribute, None) != needed:
        raise SpecError(
            f"{remedy.key}: {value!r} ({remedy.name}) needs a routing whose {attribute} is {needed!r} "
            f"(a squashed length, e.g. dynamic); routing '{routing}' has not"
        )


def _yaml(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)
