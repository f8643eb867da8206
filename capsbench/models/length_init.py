"""The length-preserving initialisation (``model.init: length``): vote weights that keep squash lengths alive.

Why dynamic routing dies at depth at initialisation. With the default weights (std ``1/sqrt(fan_in)``,
fan_in = 4 for 4x4 matrices, ``D_in`` for linear maps) a vote has the squared length of its child in
expectation, ``E|u_ij|^2 = |u_i|^2``. The first iteration's coefficients are uniform, ``1/J``, and the
votes of different children are independent (independent weights), so the parent's vector
``s_j = sum_i u_ij / J`` has ``E|s_j|^2 = I_real l^2 / J^2`` for ``I_real`` children of length ``l``
that are not padding. The squash maps ``|s|`` to ``|s|^2 / (1 + |s|^2)``, which is about ``|s|^2``
for a short vector, so one layer maps a length ``l`` to about ``(c l)^2`` with ``c = sqrt(I_real) / J``:
on the long-cpu protocol (1x1 capsule grid: 16 real children of 144 window slots, 16 parents) ``c =
0.25`` and the primary length 0.93 becomes 0.05, then 2e-4, then 0 (measured:
``tests/test_remedies.py``). The map ``l -> g(c l)``, ``g(x) = x^2 / (1 + x^2)``, has a fixed point
other than 0 only for ``c >= 2``, so for any smaller ``c`` the lengths fall to 0 doubly
exponentially. The cause is the weight std (``c`` far below 2), made fatal by the squash's
small-length regime (quadratic).

The remedy: scale the weights by a gain ``c / (sqrt(I_real) / J)`` chosen so that the map has a fixed
point at a target length ``l*``: ``g(c l*) = l*`` gives ``c = 1 / sqrt(l* (1 - l*))``, hence

    weight_std = gain / sqrt(fan_in),   gain = J / sqrt(I_real * l* * (1 - l*)).

The fixed point is stable when the map's slope there, ``2 (1 - l*)``, is below 1, i.e. ``l* > 0.5``;
``l* = 0.7`` (slope 0.6) leaves margin on both sides: lengths that start higher or lower than 0.7 move
towards it layer by layer instead of vanishing, and the squash is not saturated (its slope at
``|s| = sqrt(7/3)`` is 0.28 of the maximum at ``|s| = 1/sqrt(3)``). ``I_real`` is the mean number of
window slots inside the grid over the output positions (padding slots hold zero poses), times the input
types. Later routing iterations concentrate coefficients on agreeing parents, which lengthens ``s``
somewhat; the fixed point absorbs that.

Example::

    window_slots((1, 1), 3, 1, 1), window_slots((4, 4), 3, 1, 1)     # (1.0, 6.25)
    round(length_gain(children=16, parents=16), 3)                   # 8.729
"""

from __future__ import annotations

import math

TARGET_LENGTH = 0.7  # the squash fixed point the weights aim for (stable: slope 2 (1 - 0.7) = 0.6 < 1)


def _axis_slots(size: int, kernel: int, stride: int, padding: int) -> float:
    """Mean over output indices of how many of the ``kernel`` taps fall inside ``[0, size)``."""
    outputs = (size + 2 * padding - kernel) // stride + 1
    inside = [sum(0 <= o * stride - padding + k < size for k in range(kernel)) for o in range(outputs)]
    return sum(inside) / outputs


def window_slots(in_hw: tuple[int, int], kernel: int, stride: int, padding: int) -> float:
    """Mean number of a window's ``kernel x kernel`` slots inside an ``in_hw`` grid, over output positions."""
    return _axis_slots(in_hw[0], kernel, stride, padding) * _axis_slots(in_hw[1], kernel, stride, padding)


def length_gain(children: float, parents: int, target: float = TARGET_LENGTH) -> float:
    """The factor on the default std ``1/sqrt(fan_in)`` that makes ``target`` the squash's fixed length."""
    if not 0.5 < target < 1:
        raise ValueError(f"the target length must be in (0.5, 1) for a stable fixed point, got {target}")
    return parents / math.sqrt(children * target * (1 - target))


def length_weight_std(children: float, parents: int, fan_in: int, target: float = TARGET_LENGTH) -> float:
    """``length_gain / sqrt(fan_in)``: the std of the vote weights of a layer with ``children`` real children."""
    return length_gain(children, parents, target) / math.sqrt(fan_in)
