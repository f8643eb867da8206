"""95% intervals over seeds: the one place their maths lives (tables, figures and reports reuse it).

``t_interval(values)``: the two-sided 95% Student-t confidence interval of the mean,
``mean +- t(0.975, n-1) * s / sqrt(n)`` with ``s`` the sample standard deviation (n-1). Seeds are
few (2-5), so the normal 1.96 would be far too narrow: with 2 seeds t is 12.71. Below two values
there is no interval (``None``): a single seed says nothing about the spread.

``t_quantile(df)``: t(0.975, df) from a table for df 1-30 (to 4 decimals, standard tables), and
the Cornish-Fisher expansion around the normal quantile above (error below 1e-4 there), so
nothing here needs scipy.

``welch_interval(a, b)``: the 95% Welch interval of ``mean(a) - mean(b)`` (unequal variances,
Welch-Satterthwaite degrees of freedom rounded down, which widens it: conservative); None when
either side has fewer than two values.

``geometric_interval(values)``: for ratios spanning decades (gradient ratios): the geometric mean of the
positive finite values and the t-interval of their log10, mapped back; zeros and non-finite values are left out,
and the caller says what a zero means (a gradient that underflowed is a result, not a missing value).

``overlap(a, b)``: whether two intervals (``(low, high)``) share a point; ``None`` (no interval)
overlaps nothing.

Example::

    t_interval([0.91, 0.93])      # (0.7929..., 1.0470...): two seeds, t = 12.706
    t_interval([0.9])             # None
    t_interval([0.5, 0.9], 0, 1)  # (0, 1): clipped to what an accuracy can be
"""

from __future__ import annotations

import math

Z975 = 1.959963984540054
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_std(values) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (None below 2) and count of the non-null values (order-independent)."""
    xs = sorted(float(v) for v in values if v is not None)
    n = len(xs)
    if n == 0:
        return None, None, 0
    mean = math.fsum(xs) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return mean, std, n


def t_interval(values, low: float | None = None, high: float | None = None) -> tuple[float, float] | None:
    """The 95% t-interval of the mean of the non-null ``values``; None below two of them.

    ``low``/``high`` clip it to the range the quantity can take (an accuracy is in [0, 1]): with
    two seeds t is 12.7 and the raw interval easily runs past 100%.
    """
    mean, std, n = mean_std(values)
    if n < 2:
        return None
    half = t_quantile(n - 1) * std / math.sqrt(n)
    lo, hi = mean - half, mean + half
    return (lo if low is None else max(low, lo), hi if high is None else min(high, hi))


def geometric_interval(values) -> tuple[float | None, tuple[float, float] | None, int]:
    """Geometric mean, its 95% interval (from log10; None below two values) and the count of the positive finite
    ``values`` (None, zero, negative and non-finite values are not counted)."""
    logs = [math.log10(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    if not logs:
        return None, None, 0
    interval = t_interval(logs)
    return (10 ** mean_std(logs)[0], None if interval is None else (10 ** interval[0], 10 ** interval[1]),
            len(logs))


def overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]


def welch_interval(a, b) -> tuple[float, float] | None:
    """95% Welch interval of ``mean(a) - mean(b)`` over the non-null values; None below two on either side.

    Degrees of freedom: Welch-Satterthwaite, rounded down (a smaller df gives a larger t: the interval
    errs wide, never narrow). Both sides without spread give the exact difference as a zero-width interval.
    """
    mean_a, std_a, n_a = mean_std(a)
    mean_b, std_b, n_b = mean_std(b)
    if n_a < 2 or n_b < 2:
        return None
    diff = mean_a - mean_b
    va, vb = std_a**2 / n_a, std_b**2 / n_b
    if va + vb == 0:
        return (diff, diff)
    df = (va + vb) ** 2 / ((va**2 / (n_a - 1) if va else 0.0) + (vb**2 / (n_b - 1) if vb else 0.0))
    half = t_quantile(max(1, math.floor(df))) * math.sqrt(va + vb)
    return (diff - half, diff + half)
