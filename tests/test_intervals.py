"""The interval maths shared by tables and figures."""

from __future__ import annotations

import math

import pytest

from capsbench.intervals import geometric_interval, overlap, t_interval, t_quantile


@pytest.mark.parametrize(("df", "expected"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423), (40, 2.0211),
                                              (60, 2.0003), (120, 1.9799), (10_000, 1.9602)])
def test_t_quantile_matches_the_tables(df, expected):
    assert t_quantile(df) == pytest.approx(expected, abs=2e-4)


def test_t_interval_two_and_three_seeds():
    lo, hi = t_interval([0.90, 0.92])
    assert (lo + hi) / 2 == pytest.approx(0.91) and (hi - lo) / 2 == pytest.approx(12.7062 * math.sqrt(2e-4 / 2))
    lo, hi = t_interval([1.0, 2.0, 3.0])
    assert (hi - lo) / 2 == pytest.approx(4.3027 * 1.0 / math.sqrt(3))
    assert t_interval([0.9]) is None and t_interval([None, 0.9]) is None and t_interval([]) is None


def test_t_interval_does_not_depend_on_order():
    values = [0.1 * i + 1e-9 * i * i for i in range(7)]
    assert t_interval(values) == t_interval(list(reversed(values)))


def test_overlap():
    assert overlap((0, 1), (1, 2)) and overlap((0, 3), (1, 2)) and not overlap((0, 1), (1.5, 2))
    assert not overlap(None, (0, 1)) and not overlap((0, 1), None)


def test_t_interval_is_clipped_to_the_range_of_the_quantity():
    assert t_interval([0.5, 0.9], 0.0, 1.0) == (0.0, 1.0)
    lo, hi = t_interval([0.5, 0.9])
    assert lo < 0 and hi > 1


def test_geometric_interval_is_the_t_interval_of_log10_mapped_back():
    mean, (lo, hi), n = geometric_interval([1e-3, 1e-1])
    assert n == 2 and mean == pytest.approx(1e-2)
    assert math.log10(lo) == pytest.approx(-2 - 12.7062) and math.log10(hi) == pytest.approx(-2 + 12.7062)
    assert geometric_interval([4.0]) == (pytest.approx(4.0), None, 1)


def test_geometric_interval_leaves_out_what_has_no_logarithm():
    # zeros, negatives, infinities and missing values are not counted; the caller decides what a zero means
    assert geometric_interval([0.0, None, -1.0, math.inf, math.nan, 100.0]) == (pytest.approx(100.0), None, 1)
    assert geometric_interval([0.0, None]) == (None, None, 0)
