"""Lazy package exports (PEP 562): ``from package import Name`` without importing torch on ``import package``.

A package lists ``{name: "module:attr"}`` and sets ``__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)``.
Listing components or validating a spec imports ``capsbench.capsules.routing.declared_options``;
the package ``__init__`` files on that path must stay free of torch, which eager exports would pull in.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: each exported name imported on first access."""
    module_globals = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = exports[name].partition(":")
        value = getattr(importlib.import_module(module), attr)
        module_globals[name] = value  # cached: the next access is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*module_globals, *exports})

    return __getattr__, __dir__
