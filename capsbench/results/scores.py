"""Seed statistics per depth and the depth-scalability scores of each (method, data set).

Everything here is a pure function of leaderboard records (see ``entry.py``) of ONE
protocol version; callers never mix protocol versions. Sums use ``math.fsum`` over
sorted values, so the result does not depend on the order records were read in.

Per depth (``ok`` runs only; ``diverged``, ``oom`` and ``failed`` runs are counted as failures):
``accuracy``, ``avg_dead_conv`` (dead capsule types per ConvCaps layer, the paper's y axis) and
``dead_fraction`` (dead types / types, averaged over ConvCaps layers), each as mean, sample
standard deviation (null below two seeds) and count.

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

Rank (within one data set of one protocol version): capsule methods by ``deepest_accuracy``
(higher first; null last), then ``best_accuracy``, then name. Baselines are not ranked.

Example::

    table = aggregate(entries)              # entries of one protocol version
    row = table["digits"]["rows"][0]
    row["name"], row["scores"]["collapse_depth"], row["depths"][0]["accuracy"]["mean"]
"""

from __future__ import annotations

import math
from collections import defaultdict

from capsbench.errors import UserError
from capsbench.results.entry import FAILURES

CHANCE_MARGIN = 0.05  # "within 5 points of chance"
HALF_DEAD = 0.5
_EPS = 1e-12  # 0.1 + 0.05 is 0.15000000000000002 in floats: an accuracy of exactly 0.15 collapses


def stats(values) -> dict:
    """Mean, sample standard deviation (n-1; null below 2 values) and count of the non-null values."""
    xs = sorted(float(v) for v in values if v is not None)
    n = len(xs)
    if n == 0:
        return {"mean": None, "std": None, "count": 0}
    mean = math.fsum(xs) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "count": n}


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
            "accuracy": stats(e["metrics"]["test_accuracy"] for e in ok),
            "avg_dead_conv": stats(e["metrics"]["avg_dead_conv"] for e in ok),
            "dead_fraction": stats(e["metrics"]["dead_fraction_conv"] for e in ok),
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
        limit = 1.0 / num_classes + CHANCE_MARGIN + _EPS
        collapse = next((depth for depth, value in acc if value <= limit), None)
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
                "depths": depths,
            })
        ranked = sorted((r for r in rows if not r["baseline"]), key=_rank_key)
        baselines = sorted((r for r in rows if r["baseline"]), key=_rank_key)
        for i, row in enumerate(ranked, start=1):
            row["rank"] = i
        for row in baselines:
            row["rank"] = None
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
