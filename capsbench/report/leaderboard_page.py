"""``leaderboard/index.html``: one static page, usable from the file system with no network.

Browsers refuse ``fetch`` on ``file://``, so the data is inlined as JSON (``<script
type="application/json" id="leaderboard-data">``) next to the page's own script and style
(``leaderboard_page.js``, ``leaderboard_page.css``, inlined too: no CDN, nothing fetched). The script builds one
table per (protocol version, data set) with the depth figure beside it, filters by protocol,
data set and method, sorts by any column, and opens a panel per method with its per-depth numbers,
its activation grid (mean activation of every capsule type of every layer, test set, mean over
seeds) and its gradient figure (weight-gradient norm per layer, one line per depth), both drawn
as inline SVG from the records.

Deterministic like every built file: sorted keys, rounded floats, no timestamps.
"""

from __future__ import annotations

import json
from collections import defaultdict
from html import escape
from pathlib import Path

from capsbench.report import leaderboard_tables as tables
from capsbench.report import remedies_view
from capsbench.results import provenance

_HERE = Path(__file__).resolve().parent


def _mean(values):
    xs = sorted(v for v in values if v is not None)
    return sum(xs) / len(xs) if xs else None


def _depth_details(entries: list[dict]) -> dict[int, dict]:
    """Per depth: mean activation per type of every layer, and mean weight-gradient norm per layer."""
    by_depth: dict[int, list[dict]] = defaultdict(list)
    for e in entries:
        if e["status"] == "ok":
            by_depth[e["depth"]].append(e)
    out = {}
    for depth, group in by_depth.items():
        order = group[0]["metrics"]["layer_order"]
        layers = []
        for name in order:
            per_seed = [e["metrics"]["layers"].get(name, {}).get("types") or [] for e in group]
            width = max(map(len, per_seed), default=0)
            layers.append([name, [_mean(t[i] if i < len(t) else None for t in per_seed) for i in range(width)]])
        names = sorted({n for e in group for n in e["metrics"]["grad_norms"]})
        grads = [[n, _mean((e["metrics"]["grad_norms"].get(n) or {}).get("weight") for e in group)] for n in names]
        out[depth] = {"layers": layers, "grads": [g for g in grads if g[1] is not None]}
    return out


def _sort_keys(row: dict) -> list:
    s = row["scores"]

    def num(v, missing=-1.0):
        return missing if v is None else v

    never = 1e9
    return [num(row["rank"], never), row["name"], num(s["best_accuracy"]), num(s["deepest_accuracy"]),
            num(s["retention"]), num(s["collapse_depth"], never), num(s["mean_dead_fraction"]),
            num(s["half_dead_depth"], never), row["runs"], sum(row["failures"].values())]


def page_data(sections: list[dict]) -> dict:
    out = []
    for sec in sections:
        datasets = []
        for dataset, tab in sorted(sec["tables"].items()):
            cells = tables.human_rows(tab)
            rows = []
            for row, row_cells in zip(tab["rows"], cells):
                details = _depth_details([e for e in sec["entries"] if e["dataset"] == dataset and
                                          e["method"] == row["method"] and e["variant"] == row["variant"]])
                rows.append({
                    "name": row["name"], "baseline": row["baseline"], "cells": row_cells, "sort": _sort_keys(row),
                    "depths": [{"depth": d["depth"], "runs": d["runs"], "ok": d["ok"],
                                "accuracy": d["accuracy"]["mean"], "accuracy_ci95": d["accuracy"]["ci95"],
                                "dead": d["avg_dead_conv"]["mean"], "dead_fraction": d["dead_fraction"]["mean"],
                                **details.get(d["depth"], {"layers": [], "grads": []})} for d in row["depths"]],
                })
            datasets.append({"dataset": dataset, "num_classes": tab["num_classes"], "chance": tab["chance"],
                             "dead_threshold": tab["dead_threshold"], "figure": f"{sec['folder']}/{dataset}.png",
                             "rows": rows})
        out.append({"protocol": sec["protocol"], "protocol_version": sec["protocol_version"],
                    "version": sec["version"], "folder": sec["folder"], "provenance": sec["provenance"],
                    "provenance_text": provenance.text(sec["provenance"]), "datasets": datasets})
    return {"headers": tables.HEADERS, "sections": out}


def index_html(sections: list[dict], changelog: str, readme: str) -> str:
    data = json.dumps(tables.rounded(page_data(sections)), sort_keys=True, separators=(",", ":"), allow_nan=False)
    data = data.replace("</", "<\\/")  # a "</script>" inside a string must not end the element
    definitions = "\n".join(f"<dt><code>{escape(k)}</code></dt><dd>{escape(v)}</dd>"
                            for k, v in tables.DEFINITIONS.items())
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>capsbench leaderboard</title>
<style>
{(_HERE / "leaderboard_page.css").read_text()}</style>
</head>
<body>
<h1>capsbench depth-scalability leaderboard</h1>
<p>How capsule networks scale with depth: test accuracy and dead capsules for 0..N stacked ConvCaps layers, per
routing method and data set, mean and 95% interval over seeds. Ranked in tie groups, only within one protocol
version. Click a column to sort, a method for its per-depth numbers, activation grids and gradient figure. See the
<a href="{changelog}">changelog</a> and <a href="{readme}">README</a>.</p>
<div id="board"></div>{remedies_view.html(sections)}
<h2>Definitions</h2>
<dl>
{definitions}
</dl>
<script type="application/json" id="leaderboard-data">{data}</script>
<script>
{(_HERE / "leaderboard_page.js").read_text()}</script>
</body>
</html>
"""
