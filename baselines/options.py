"""Checking ``model.options`` of the baseline builders: known keys, right types, one-line errors.

Example::

    >>> read_options({"width": 8}, {"width": 16, "zero_init_last": True}, "timm_resnet")
    {'width': 8, 'zero_init_last': True}
    >>> read_options({"widht": 8}, {"width": 16}, "resnet")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    capsbench.errors.UserError: model.options.widht: unknown option of model 'resnet' (did you mean 'width'?); ...
"""

from __future__ import annotations

from typing import Any

from capsbench.config import plain  # noqa: F401 - re-exported for the baseline builders
from capsbench.errors import UserError, did_you_mean
from capsbench.models.capsnet import image_hw  # noqa: F401 - re-exported for the baseline builders


def read_options(options: Any, defaults: dict[str, Any], model: str) -> dict[str, Any]:
    """``defaults`` updated with ``options``; unknown keys and wrong types raise a UserError.

    A value must have the type of its default (an int is accepted where a float is the default).
    """
    given = plain(options)
    out = dict(defaults)
    for key, value in given.items():
        if key not in defaults:
            raise UserError(
                f"model.options.{key}: unknown option of model '{model}'{did_you_mean(key, defaults)}; "
                f"expected one of: {', '.join(defaults)}"
            )
        default = defaults[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, type(default)) and not isinstance(value, bool)
        if not ok:
            raise UserError(f"model.options.{key}: expected {type(default).__name__} like {default!r}, got {value!r}")
        out[key] = value
    return out


def positive(key: str, value: int | float, model: str) -> None:
    if value <= 0:
        raise UserError(f"model.options.{key}: expected a positive number for model '{model}', got {value!r}")


def depth_of(cfg: Any) -> int:
    depth = cfg.depth
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise UserError(f"model.depth: expected an integer >= 0 (the number of blocks), got {depth!r}")
    return depth
