"""Declared values: what a setting may be, stated once as data and checked in one place.

An ``Option`` declares the type, default, range or choices of one value. The same
declaration checks a run-config field (``capsbench.config``: ``field(metadata=...)``) and
a component's options (a routing's ``model.routing_options``), so ``capsbench validate``
checks both without importing torch, with one message format:
``<key>: expected <what>, got <value>``.

Example::

    OPTIONS = {"final_lambda": Option(float, 0.01, gt=0, doc="inverse temperature of the last iteration")}
    check_options({"final_lamda": 1.0}, OPTIONS, "model.routing_options", "routing 'em'")
    # SpecError: model.routing_options.final_lamda: unknown option of routing 'em'
    #            (did you mean 'final_lambda'?); expected one of: final_lambda
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from capsbench.errors import SpecError, did_you_mean

_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


@dataclass(frozen=True)
class Option:
    """One declared value: ``type`` (int, float, bool or str), its default, and what else it must be.

    ``gt``/``ge``/``lt``/``le`` bound numbers, ``choices`` lists the allowed values,
    ``nullable`` allows null (whose meaning ``doc`` should say). A float option takes
    integers too (``1`` -> ``1.0``); an int option never takes a bool.
    """

    type: type
    default: Any = None
    doc: str = ""
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    pattern: str | None = None  # a string option: a regular expression the whole value must match
    describe: str | None = None  # what a value must be, in words, when the bounds alone do not say it

    def expected(self) -> str:
        """What a value must be, in words: 'a number > 0', 'one of sum, mean', 'an integer >= 1 or null'."""
        if self.describe is not None:
            text = self.describe
        elif self.choices is not None:
            text = f"one of {', '.join(str(c) for c in self.choices)}"
        else:
            text = _TYPE_WORDS.get(self.type, self.type.__name__)
            low = f"> {_num(self.gt)}" if self.gt is not None else f">= {_num(self.ge)}" if self.ge is not None else ""
            high = f"< {_num(self.lt)}" if self.lt is not None else f"<= {_num(self.le)}" if self.le is not None else ""
            if low and high and self.ge is not None and self.le is not None:
                text += f" in [{_num(self.ge)}, {_num(self.le)}]"
            elif low or high:
                text += " " + " and ".join(p for p in (low, high) if p)
        return text + (" or null" if self.nullable else "")

    def check(self, value: Any, key: str) -> Any:
        """``value`` (an int made float for a float option) or a SpecError naming ``key``."""
        if value is None:
            if self.nullable:
                return None
            raise self._error(key, value)
        if not _has_type(value, self.type):
            raise self._error(key, value)
        if self.choices is not None and value not in self.choices:
            raise self._error(key, value)
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise self._error(key, value)
        if self.type in (int, float) and not self._in_range(value):
            raise self._error(key, value)
        return float(value) if self.type is float else value

    def _in_range(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return (
            (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
        )

    def _error(self, key: str, value: Any) -> SpecError:
        return SpecError(f"{key}: expected {self.expected()}, got {value!r}")


def _num(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def _has_type(value: Any, tp: type) -> bool:
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def defaults(declared: Mapping[str, Option]) -> dict[str, Any]:
    """The default value of every declared option."""
    return {name: option.default for name, option in declared.items()}


def check_options(given: Mapping[str, Any], declared: Mapping[str, Option], prefix: str, owner: str) -> dict[str, Any]:
    """Every ``given`` option checked against ``declared``; returns the defaults updated with them.

    ``prefix`` is the spec key the options sit under (``model.routing_options``) and ``owner``
    what declares them (``routing 'em'``), for the one-line messages.
    """
    out = defaults(declared)
    for key, value in given.items():
        if key not in declared:
            raise SpecError(
                f"{prefix}.{key}: unknown option of {owner}{did_you_mean(str(key), declared)}; "
                f"expected one of: {', '.join(sorted(declared)) or '(none)'}"
            )
        out[key] = declared[key].check(value, f"{prefix}.{key}")
    return out
