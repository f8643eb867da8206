"""Seed statistics per depth and the depth-scalability scores of each (method, data set).

Everything here is a pure function of leaderboard records (see ``entry.py``) of ONE
protocol version; callers never mix protocol versions. Sums use ``math.fsum`` over
sorted values, so the result does not depend on the order records were read in.

Per depth (``ok`` runs only; ``diverged``, ``oom`` and ``failed`` runs are counted as failures):
``accuracy``, ``avg_dead_conv`` (dead capsule types per ConvCaps layer, the paper's y axis) and
``dead_fraction`` (dead types / types, averaged over ConvCaps layers), each as mean, sample
standard deviation (null below two seeds), count and ``ci95``: the 95% Student-t interval of the
mean over seeds (``capsbench.intervals``; null below two seeds), clipped to the values the
quantity can take (accuracies and fractions in [0, 1], counts and retention >= 0).

Scores per row (definitions, contract; "accuracy at depth d" is the mean test accuracy over the
ok seeds at d, and only depths with at least one ok run take part):

- ``best_accuracy``, ``best_depth``: the highest accuracy over depths, and its depth (the
  shallowest on ties);
- ``deepest_depth``: the deepest depth with any run (ok or not); ``deepest_accuracy``: accuracy
  there (null when every run there failed);
- ``retention``: ``deepest_accuracy / best_accuracy`` (null when either is null or best is 0);
- ``collapse_depth``: the shallowest depth whose accuracy is within ``CHANCE_MARGIN`` (5 points)
  of chance, i.e. ``accuracy <= 1/num_classes + 0.05``; null when it never collapses (or the
  number of classes is unknown);
- ``mean_dead_fraction``: the mean over depths of the per-depth mean dead fraction (depths
  without ConvCaps layers, such as depth 0, take no part); null without any;
- ``half_dead_depth``: the shallowest depth whose mean dead fraction is >= 0.5; null when never.

Intervals of the scores (``score_intervals``), from the same scores computed on each seed alone:
``retention`` and ``deepest_accuracy`` get the 95% t-interval over seeds; the depth scores
(``collapse_depth``, ``half_dead_depth``) the range over seeds, ``[shallowest, deepest]``, with
null for "never" (a mean of depths and "never" means nothing). Only seeds with runs at every depth
of the row take part (a seed missing the deepest depth has another "deepest accuracy"); null below
two such seeds.

Rank (within one data set of one protocol version), in tie groups (``rank_groups``):

1. order: capsule methods by ``deepest_accuracy`` (higher first; null last), then
   ``best_accuracy``, then name. Baselines are not ranked;
2. rows with a 95% interval of ``deepest_accuracy`` (>= 2 ok seeds at the deepest depth) are
   grouped: the first row not yet in a group leads a new group, and every later row whose
   interval overlaps the leader's joins it;
3. rows without one (``single_seed``) join no such group: a single seed cannot show that a row is
   better than another, so they form one last group together, below every row that has an
   interval (never ranked above a tie);
4. every row of a group gets the group's rank, 1 + the number of rows in earlier groups
   (competition ranking: 1, 1, 3); ``tied`` says whether the group has more than one row.

Example::

    table = aggregate(entries)              # entries of one protocol version
    row = table["digits"]["rows"][0]
    row["name"], row["scores"]["collapse_depth"], row["depths"][0]["accuracy"]["mean"]
"""

from __future__ import annotations

import math
from collections import defaultdict

from capsbench.errors import UserError
from capsbench.intervals import mean_std, overlap, t_interval
from capsbench.results.entry import FAILURES

CHANCE_MARGIN = 0.05  # "within 5 points of chance"
HALF_DEAD = 0.5
_EPS = 1e-12  # 0.1 + 0.05 is 0.15000000000000002 in floats: an accuracy of exactly 0.15 collapses


def collapse_limit(num_classes: int) -> float:
    """The accuracy at or below which a model has collapsed: within ``CHANCE_MARGIN`` of chance (the one line the
    leaderboard's ``collapse_depth``, the remedies' rule S and criterion A all draw)."""
    return 1.0 / num_classes + CHANCE_MARGIN + _EPS


def stats(values, low: float | None = 0.0, high: float | None = None) -> dict:
    """Mean, sample standard deviation (n-1), count and 95% t-interval (null below 2; clipped to [low, high])."""
    values = list(values)
    mean, std, n = mean_std(values)
    interval = t_interval(values, low, high)
    return {"mean": mean, "std": std, "count": n, "ci95": list(interval) if interval else None}


def depth_stats(entries: list[dict]) -> list[dict]:
    """One dict per depth (ascending) over the seeds of one row."""
    by_depth: dict[int, list[dict]] = defaultdict(list)
    for e in entries:
        by_depth[e["depth"]].append(e)
    out = []
    for depth in sorted(by_depth):
        group = by_depth[depth]
        ok = [e for e in group if e["status"] == "ok"]
        out.append({
            "depth": depth,
            "runs": len(group),
            "ok": len(ok),
            "failures": {status: sum(e["status"] == status for e in group) for status in FAILURES},
            "seeds": sorted(e["seed"] for e in group),
            "accuracy": stats((e["metrics"]["test_accuracy"] for e in ok), 0.0, 1.0),
            "avg_dead_conv": stats(e["metrics"]["avg_dead_conv"] for e in ok),
            "dead_fraction": stats((e["metrics"]["dead_fraction_conv"] for e in ok), 0.0, 1.0),
        })
    return out


def scores(depths: list[dict], num_classes: int | None) -> dict:
    """The depth-scalability scores of one row from its ``depth_stats`` (see the module docstring)."""
    acc = [(d["depth"], d["accuracy"]["mean"]) for d in depths if d["accuracy"]["mean"] is not None]
    dead = [(d["depth"], d["dead_fraction"]["mean"]) for d in depths if d["dead_fraction"]["mean"] is not None]
    best_depth, best = None, None
    for depth, value in acc:  # ascending depth: strict > keeps the shallowest on ties
        if best is None or value > best:
            best_depth, best = depth, value
    deepest_depth = depths[-1]["depth"] if depths else None
    deepest = depths[-1]["accuracy"]["mean"] if depths else None
    collapse = None
    if num_classes:
        collapse = next((depth for depth, value in acc if value <= collapse_limit(num_classes)), None)
    return {
        "best_accuracy": best,
        "best_depth": best_depth,
        "deepest_depth": deepest_depth,
        "deepest_accuracy": deepest,
        "retention": deepest / best if deepest is not None and best else None,
        "collapse_depth": collapse,
        "mean_dead_fraction": math.fsum(v for _, v in dead) / len(dead) if dead else None,
        "half_dead_depth": next((depth for depth, value in dead if value >= HALF_DEAD), None),
    }


def score_intervals(group: list[dict], num_classes: int | None) -> dict:
    """Intervals of a row's scores over its seeds (see the module docstring); nulls below two seeds."""
    per_seed = defaultdict(list)
    for e in group:
        per_seed[e["seed"]].append(e)
    # only seeds run at every depth of the row: a seed without the row's deepest depth (a screening that took one
    # seed deeper) would put its own shallower "deepest accuracy" and "never collapses" into the interval
    depths = {e["depth"] for e in group}
    seeds = [scores(depth_stats(es), num_classes) for _, es in sorted(per_seed.items())
             if {e["depth"] for e in es} == depths]
    out: dict = {}
    for key, high in (("retention", None), ("deepest_accuracy", 1.0)):
        interval = t_interval((s[key] for s in seeds), 0.0, high)
        out[key] = list(interval) if interval else None
    for key in ("collapse_depth", "half_dead_depth"):
        values = [s[key] for s in seeds]
        out[key] = None if len(values) < 2 else [
            min(values, key=lambda v: math.inf if v is None else v),
            max(values, key=lambda v: math.inf if v is None else v),
        ]
    return out


def deepest_interval(row: dict) -> tuple[float, float] | None:
    deepest = row["depths"][-1]["accuracy"] if row["depths"] else None
    return tuple(deepest["ci95"]) if deepest and deepest["ci95"] else None


def rank_groups(ranked: list[dict]) -> None:
    """Set ``rank``, ``group``, ``tied`` and ``single_seed`` on rows already in rank order (module docstring)."""
    with_interval = [r for r in ranked if deepest_interval(r) is not None]
    single = [r for r in ranked if deepest_interval(r) is None]
    groups: list[list[dict]] = []
    remaining = with_interval
    while remaining:
        leader = deepest_interval(remaining[0])
        groups.append([remaining[0]] + [r for r in remaining[1:] if overlap(leader, deepest_interval(r))])
        remaining = [r for r in remaining[1:] if not any(r is m for m in groups[-1])]
    if single:
        groups.append(single)
    ranked[:] = [row for group in groups for row in group]
    position = 1
    for number, group in enumerate(groups, start=1):
        for row in group:
            row["rank"], row["group"], row["tied"] = position, number, len(group) > 1
            row["single_seed"] = deepest_interval(row) is None
        position += len(group)


def _rank_key(row: dict):
    s = row["scores"]
    deepest, best = s["deepest_accuracy"], s["best_accuracy"]
    return (deepest is None, -(deepest or 0.0), best is None, -(best or 0.0), row["name"])


def aggregate(entries: list[dict]) -> dict[str, dict]:
    """``{dataset: {"num_classes", "dead_threshold", "conv_types", "chance", "rows": [...]}}`` for one protocol version.

    A row is one (method, variant) on one data set; its ``name`` is the method, with the
    variant appended in brackets only when one method has several variants on that data set.
    """
    versions = {(e["protocol"], e["protocol_version"]) for e in entries}
    if len(versions) > 1:
        raise UserError(f"cannot rank records of several protocol versions together: {sorted(versions)}")
    groups: dict[str, dict[tuple[str, str], list[dict]]] = defaultdict(lambda: defaultdict(list))
    for e in entries:
        groups[e["dataset"]][(e["method"], e["variant"])].append(e)
    out = {}
    for dataset in sorted(groups):
        rows_by_key = groups[dataset]
        classes = {e["num_classes"] for group in rows_by_key.values() for e in group} - {None}
        if len(classes) > 1:
            raise UserError(f"data set '{dataset}': records disagree on the number of classes {sorted(classes)}")
        num_classes = classes.pop() if classes else None
        variants_per_method = defaultdict(set)
        for method, variant in rows_by_key:
            variants_per_method[method].add(variant)
        rows = []
        for (method, variant), group in rows_by_key.items():
            depths = depth_stats(group)
            rows.append({
                "name": method if len(variants_per_method[method]) == 1 else f"{method} [{variant[:6]}]",
                "method": method,
                "variant": variant,
                "baseline": any(e["baseline"] for e in group),
                "runs": len(group),
                "ok": sum(e["status"] == "ok" for e in group),
                "failures": {s: sum(e["status"] == s for e in group) for s in FAILURES},
                "seeds": sorted({e["seed"] for e in group}),
                "scores": scores(depths, num_classes),
                "score_intervals": score_intervals(group, num_classes),
                "depths": depths,
            })
        ranked = sorted((r for r in rows if not r["baseline"]), key=_rank_key)
        baselines = sorted((r for r in rows if r["baseline"]), key=_rank_key)
        rank_groups(ranked)
        for row in baselines:
            row["rank"], row["group"], row["tied"] = None, None, False
            row["single_seed"] = deepest_interval(row) is None
        conv_types = [
            len(layer["types"]) for group in rows_by_key.values() for e in group
            for layer in e["metrics"]["layers"].values() if layer["kind"] == "conv"
        ]
        thresholds = sorted({
            float(e["config"]["metrics"].get("dead_threshold", 0.01)) for g in rows_by_key.values() for e in g
        })
        out[dataset] = {
            "num_classes": num_classes,
            "dead_threshold": thresholds[0] if len(thresholds) == 1 else None,
            "conv_types": max(conv_types) if conv_types else None,
            "chance": 1.0 / num_classes if num_classes else None,
            "rows": ranked + baselines,
        }
    return out
