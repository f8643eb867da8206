"""Every depth-scalability score on crafted records, including the edge cases."""

from __future__ import annotations

import math

import pytest

from capsbench.errors import UserError
from capsbench.results.entry import to_entry
from capsbench.results.scores import aggregate, stats
from capsbench.results.testing import fake_run_record


def entry(depth, seed=0, accuracy=0.9, dead=None, routing="em", status="ok", types=16, **kw):
    return to_entry(fake_run_record(routing=routing, depth=depth, seed=seed, accuracy=accuracy,
                                    dead=dead if dead is not None else [0] * depth, status=status, types=types, **kw))


def row_of(entries, name="capsnet-em", dataset="digits"):
    return next(r for r in aggregate(entries)[dataset]["rows"] if r["name"] == name)


def test_stats_mean_sample_std_and_count():
    half = 12.7062 * math.sqrt(0.02) / math.sqrt(2)  # t(0.975, 1) s / sqrt(n)
    assert stats([0.5, None, 0.7], None) == {"mean": pytest.approx(0.6), "std": pytest.approx(math.sqrt(0.02)),
                                             "count": 2, "ci95": [pytest.approx(0.6 - half), pytest.approx(0.6 + half)]}
    assert stats([0.5, None, 0.7], 0.0, 1.0)["ci95"] == [0.0, 1.0]  # clipped to what the quantity can be
    assert stats([0.5]) == {"mean": 0.5, "std": None, "count": 1, "ci95": None}
    assert stats([]) == {"mean": None, "std": None, "count": 0, "ci95": None}


def test_scores_of_a_collapsing_method():
    # depth: 1 -> 0.95/0.97, 2 -> 0.98, 3 -> 0.40, 4 -> 0.15 (exactly chance + 5 points), 5 -> 0.10
    rows = [
        entry(1, 0, 0.95, [0]), entry(1, 1, 0.97, [2]),
        entry(2, 0, 0.98, [4, 4]),
        entry(3, 0, 0.40, [8, 8, 8]),
        entry(4, 0, 0.15, [16, 16, 8, 8]),
        entry(5, 0, 0.10, [16] * 5),
    ]
    s = row_of(rows)["scores"]
    assert s["best_accuracy"] == pytest.approx(0.98) and s["best_depth"] == 2
    assert s["deepest_depth"] == 5 and s["deepest_accuracy"] == pytest.approx(0.10)
    assert s["retention"] == pytest.approx(0.10 / 0.98)
    assert s["collapse_depth"] == 4  # 0.15 <= 1/10 + 0.05, inclusive despite float rounding
    assert s["half_dead_depth"] == 3  # mean dead fractions: 1/16, 4/16, 8/16, 12/16, 1
    per_depth = [1 / 16, 0.25, 0.5, 0.75, 1.0]  # depth 1: mean of 0/16 and 2/16
    assert s["mean_dead_fraction"] == pytest.approx(sum(per_depth) / 5)
    depth1 = row_of(rows)["depths"][0]
    assert depth1["accuracy"]["mean"] == pytest.approx(0.96) and depth1["accuracy"]["count"] == 2
    assert depth1["avg_dead_conv"]["mean"] == pytest.approx(1.0)


def test_a_method_that_never_collapses_nor_half_dies_gets_null():
    s = row_of([entry(d, accuracy=0.9, dead=[3] * d) for d in (1, 2, 3)])["scores"]
    assert s["collapse_depth"] is None and s["half_dead_depth"] is None
    assert s["retention"] == pytest.approx(1.0)


def test_just_above_the_collapse_limit_does_not_collapse():
    assert row_of([entry(1, accuracy=0.1501)])["scores"]["collapse_depth"] is None
    assert row_of([entry(1, accuracy=0.1500)])["scores"]["collapse_depth"] == 1


def test_chance_follows_the_number_of_classes():
    rows = [entry(1, accuracy=0.30, dataset="smallnorb", num_classes=5), entry(2, accuracy=0.25, dataset="smallnorb",
                                                                              num_classes=5)]
    table = aggregate(rows)["smallnorb"]
    assert table["chance"] == pytest.approx(0.2) and table["num_classes"] == 5
    assert table["rows"][0]["scores"]["collapse_depth"] == 2  # 0.30 > 1/5 + 0.05 >= 0.25


def test_failures_are_counted_and_never_averaged_in():
    rows = [entry(1, 0, 0.9), entry(1, 1, status="diverged"), entry(2, 0, status="oom"), entry(2, 1, status="failed")]
    row = row_of(rows)
    assert row["failures"] == {"diverged": 1, "oom": 1, "failed": 1} and row["ok"] == 1 and row["runs"] == 4
    assert row["depths"][0]["accuracy"] == {"mean": 0.9, "std": None, "count": 1, "ci95": None}
    assert row["depths"][1]["failures"] == {"diverged": 0, "oom": 1, "failed": 1}
    s = row["scores"]
    assert s["deepest_depth"] == 2 and s["deepest_accuracy"] is None and s["retention"] is None
    assert s["best_accuracy"] == 0.9 and s["best_depth"] == 1


def test_best_depth_prefers_the_shallowest_on_ties():
    assert row_of([entry(3, accuracy=0.9), entry(1, accuracy=0.9), entry(2, accuracy=0.8)])["scores"]["best_depth"] == 1


def test_depth_zero_has_no_convcaps_layers_and_no_dead_fraction():
    row = row_of([entry(0, accuracy=0.9), entry(1, accuracy=0.8, dead=[16])])
    assert row["depths"][0]["dead_fraction"]["mean"] is None
    assert row["scores"]["mean_dead_fraction"] == 1.0 and row["scores"]["half_dead_depth"] == 1


def two_seeds(depth, accuracy, spread=0.002, **kw):
    return [entry(depth, 0, accuracy - spread, **kw), entry(depth, 1, accuracy + spread, **kw)]


def test_ranking_baselines_and_variants():
    rows = [
        *two_seeds(1, 0.99, routing="em"), *two_seeds(4, 0.20, routing="em"),
        *two_seeds(1, 0.95, routing="self"), *two_seeds(4, 0.93, routing="self"),
        to_entry(fake_run_record(arch="timm_resnet", depth=4, accuracy=0.999)),
        # the same method with other settings: its own row, never averaged with the first
        *two_seeds(4, 0.50, routing="vb"),
        *two_seeds(4, 0.60, routing="vb", extra_config={"train.batch_size": 8}),
    ]
    table = aggregate(rows)["digits"]
    names = [(r["rank"], r["name"]) for r in table["rows"]]
    assert names[:2] == [(1, "capsnet-self"), (2, f"capsnet-vb [{_variant(table, 0.60)}]")]
    assert not any(r["tied"] for r in table["rows"])  # intervals of +-0.025 around means 0.1 apart
    assert names[-1] == (None, "timm_resnet")  # baselines are listed, never ranked
    assert {n for _, n in names} >= {"capsnet-em", f"capsnet-vb [{_variant(table, 0.50)}]"}


def _variant(table, accuracy):
    row = next(r for r in table["rows"] if r["scores"]["deepest_accuracy"] == pytest.approx(accuracy))
    return row["variant"][:6]


def test_protocol_versions_are_never_ranked_together():
    with pytest.raises(UserError, match="several protocol versions"):
        aggregate([entry(1), entry(1, protocol_version="2")])


def test_the_result_does_not_depend_on_record_order():
    rows = [entry(d, s, 0.5 + 0.01 * d + 0.003 * s, [d % 3] * d) for d in (1, 2, 3) for s in (0, 1, 2)]
    assert aggregate(rows) == aggregate(list(reversed(rows)))


def test_overlapping_intervals_share_a_rank_and_the_leader_decides():
    # deepest accuracy (depth 2), two seeds each: a 0.80 +- 0.01, b 0.79 +- 0.01, c 0.70 +- 0.01, d 0.60 +- 0.20
    # t(0.975, 1) = 12.71 makes the intervals: a [0.67, 0.93], b [0.66, 0.92], c [0.57, 0.83], d [-1.9, 3.1]
    rows = [*two_seeds(2, 0.80, 0.01, routing="em"), *two_seeds(2, 0.79, 0.01, routing="vb"),
            *two_seeds(2, 0.40, 0.01, routing="self"), *two_seeds(2, 0.30, 0.20, routing="dynamic")]
    table = aggregate(rows)["digits"]
    got = [(r["rank"], r["group"], r["tied"], r["name"]) for r in table["rows"]]
    # a leads; b and d overlap a; c (interval [0.27, 0.53]) does not overlap a and leads group 2
    assert got == [(1, 1, True, "capsnet-em"), (1, 1, True, "capsnet-vb"), (1, 1, True, "capsnet-dynamic"),
                   (4, 2, False, "capsnet-self")]


def test_single_seed_rows_are_marked_and_never_ranked_above_a_tie():
    rows = [entry(2, 0, 0.99, routing="em"),  # the best point estimate, but one seed
            *two_seeds(2, 0.80, 0.01, routing="vb"), *two_seeds(2, 0.79, 0.01, routing="self"),
            entry(2, 0, 0.10, routing="dynamic")]
    table = aggregate(rows)["digits"]
    got = [(r["rank"], r["tied"], r["single_seed"], r["name"]) for r in table["rows"]]
    assert got == [(1, True, False, "capsnet-vb"), (1, True, False, "capsnet-self"),
                   (3, True, True, "capsnet-em"), (3, True, True, "capsnet-dynamic")]


def test_score_intervals_over_seeds():
    # seed 0: 0.9 at depth 1, 0.45 at depth 2 (retention 0.5); seed 1: 0.8 then 0.72 (0.9), never collapses
    rows = [entry(1, 0, 0.9, [0]), entry(2, 0, 0.12, [16, 16]), entry(1, 1, 0.8, [0]), entry(2, 1, 0.72, [0, 0])]
    ci = row_of(rows)["score_intervals"]
    mean, half = (0.12 / 0.9 + 0.9) / 2, 12.7062 * abs(0.12 / 0.9 - 0.9) / math.sqrt(2) / math.sqrt(2)
    assert ci["retention"] == [0.0, pytest.approx(mean + half)]  # mean - half < 0: clipped
    assert ci["collapse_depth"] == [2, None]  # seed 0 collapses at depth 2, seed 1 never
    assert ci["half_dead_depth"] == [2, None]
    assert row_of(rows[:2])["score_intervals"] == {"retention": None, "deepest_accuracy": None,
                                                    "collapse_depth": None, "half_dead_depth": None}


def test_score_intervals_take_only_seeds_run_at_every_depth():
    # seeds 0-2 at depths 1 and 2, seed 0 alone at depth 3 (a screening): seeds 1 and 2 have no depth-3 accuracy,
    # so no interval can say anything about the row's deepest depth
    base = [entry(d, s, 0.9 - 0.01 * s, [0] * d) for d in (1, 2) for s in (0, 1, 2)]
    ci = row_of([*base, entry(3, 0, 0.12, [16, 16, 16])])["score_intervals"]
    assert ci == {"retention": None, "deepest_accuracy": None, "collapse_depth": None, "half_dead_depth": None}
    # once a second seed reaches depth 3, the two seeds that cover every depth give the intervals
    ci = row_of([*base, entry(3, 0, 0.12, [16, 16, 16]), entry(3, 1, 0.14, [16, 16, 16])])["score_intervals"]
    assert ci["collapse_depth"] == [3, 3] and ci["deepest_accuracy"][0] < 0.12 < 0.14 < ci["deepest_accuracy"][1]
