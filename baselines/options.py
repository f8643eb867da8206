"""Checking ``model.options`` of the baseline builders against their declarations (``capsbench.options``).

Each builder declares its options as data, the way a plugin routing declares its
``OPTIONS``: type, default and range per name; unknown names get did-you-mean.

Example::

    >>> from capsbench.options import Option
    >>> read_options({"width": 8}, {"width": Option(int, 16, ge=1), "zero_init_last": Option(bool, True)}, "m")
    {'width': 8, 'zero_init_last': True}
    >>> read_options({"widht": 8}, {"width": Option(int, 16, ge=1)}, "resnet")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    capsbench.errors.SpecError: model.options.widht: unknown option of model 'resnet' (did you mean 'width'?); ...
"""

from __future__ import annotations

from typing import Any

from capsbench.config import plain
from capsbench.models.capsnet import image_hw  # noqa: F401 - re-exported for the baseline builders
from capsbench.options import Option, check_options


def read_options(options: Any, declared: dict[str, Option], model: str) -> dict[str, Any]:
    """The declared defaults updated with ``options``; unknown keys, wrong types and ranges raise a UserError."""
    return check_options(plain(options), declared, "model.options", f"model '{model}'")
