"""Text renderings of an aggregated protocol version: JSON, CSV, Markdown and HTML.

Pure functions of ``scores.aggregate`` output, with fixed float formatting (JSON: rounded to
6 decimals; CSV: ``%.6f``; Markdown/HTML: percentages with one decimal), sorted keys and rows,
and no timestamps: the same records give the same bytes.
"""

from __future__ import annotations

import csv
import io
import json

from capsbench.report.markdown import md_table
from capsbench.results import provenance
from capsbench.results.entry import FAILURES
from capsbench.results.scores import CHANCE_MARGIN, HALF_DEAD

ACTIVATION_MARK = "†"  # after a method whose activation is a capsbench definition (row["activation"])
INTERVAL_KEYS = ("deepest_accuracy", "retention", "collapse_depth", "half_dead_depth")
SCORE_KEYS = ("best_accuracy", "best_depth", "deepest_depth", "deepest_accuracy", "retention", "collapse_depth",
              "mean_dead_fraction", "half_dead_depth")
DEFINITIONS = {
    "accuracy": "mean test accuracy over the seeds that finished (status ok) at one depth",
    "best_accuracy": "highest accuracy over depths; best_depth: its depth (the shallowest on ties)",
    "deepest_accuracy": "accuracy at deepest_depth, the deepest depth with any run (null when all runs there failed)",
    "retention": "deepest_accuracy / best_accuracy",
    "collapse_depth": f"shallowest depth whose accuracy <= 1/classes + {CHANCE_MARGIN} (within 5 points of chance); "
                      "null: never",
    "mean_dead_fraction": "mean over depths of the mean fraction of dead capsule types per ConvCaps layer "
                          "(test set, mean activation <= metrics.dead_threshold)",
    "half_dead_depth": f"shallowest depth whose mean dead fraction >= {HALF_DEAD}; null: never",
    "rank": "capsule methods only, per data set, in tie groups: ordered by deepest_accuracy (higher first), then "
            "best_accuracy, then name; the first row not yet grouped leads a group and every later row whose 95% "
            "interval of deepest_accuracy overlaps the leader's joins it; rows with one seed (no interval) form one "
            "last group; a group's rows share its rank (1, 1, 3); '=' marks a tie",
    "interval": "95% Student-t interval of the mean over seeds, mean +- t(0.975, n-1) s / sqrt(n) "
                "(capsbench/intervals.py); none below two seeds. Depth scores (collapse, half-dead) show the range "
                "over seeds instead",
    "failures": "runs that diverged, ran out of memory or crashed; counted, never averaged in",
    "activation": f"{ACTIVATION_MARK} after a method: it has no activation of its own, so the activation whose dead "
                  "capsule types are counted is a capsbench definition, declared by the routing at registration "
                  "(the row's `activation` field, and the note under its table)",
}


def rounded(obj):
    if isinstance(obj, float):
        return round(obj, 6) + 0.0  # + 0.0 turns -0.0 into 0.0
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v) for v in obj]
    return obj


def to_json(protocol: str, version: str, leaderboard_version: str, tables: dict, prov: dict) -> str:
    doc = {
        "provenance": prov,
        "protocol": protocol,
        "protocol_version": version,
        "leaderboard_version": leaderboard_version,
        "definitions": DEFINITIONS,
        "datasets": [
            {"dataset": name, "rows": tab["rows"],
             **{k: tab[k] for k in ("num_classes", "chance", "conv_types", "dead_threshold")}}
            for name, tab in sorted(tables.items())
        ],
    }
    return json.dumps(rounded(doc), indent=2, sort_keys=True, allow_nan=False) + "\n"


def csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else (f"{v:.6f}" if isinstance(v, float) else v) for v in row])
    return buf.getvalue()


def scores_csv(tables: dict) -> str:
    """One row per (data set, method): rank, scores, runs and failures."""
    header = ["dataset", "rank", "group", "tied", "single_seed", "method", "variant", "baseline", *SCORE_KEYS,
              *(f"{k}_{end}" for k in INTERVAL_KEYS for end in ("low", "high")), "runs", "ok", *FAILURES, "seeds"]
    rows = []
    for dataset, tab in sorted(tables.items()):
        for row in tab["rows"]:
            bounds = [(row["score_intervals"][k] or [None, None])[end] for k in INTERVAL_KEYS for end in (0, 1)]
            rows.append([dataset, row["rank"], row["group"], str(row["tied"]).lower(), str(row["single_seed"]).lower(),
                         row["name"], row["variant"], str(row["baseline"]).lower(),
                         *(row["scores"][k] for k in SCORE_KEYS), *bounds, row["runs"], row["ok"],
                         *(row["failures"][f] for f in FAILURES), " ".join(map(str, row["seeds"]))])
    return csv_text(header, rows)


def depths_csv(tables: dict) -> str:
    """One row per (data set, method, depth): mean, std and count over seeds, and failures."""
    header = ["dataset", "method", "variant", "baseline", "depth", "runs", "ok", *FAILURES,
              "accuracy_mean", "accuracy_std", "accuracy_count", "accuracy_ci95_low", "accuracy_ci95_high",
              "avg_dead_conv_mean", "avg_dead_conv_std",
              "dead_fraction_mean", "dead_fraction_std"]
    rows = []
    for dataset, tab in sorted(tables.items()):
        for row in tab["rows"]:
            for d in row["depths"]:
                rows.append([dataset, row["name"], row["variant"], str(row["baseline"]).lower(), d["depth"], d["runs"],
                             d["ok"], *(d["failures"][f] for f in FAILURES), d["accuracy"]["mean"],
                             d["accuracy"]["std"], d["accuracy"]["count"],
                             *(d["accuracy"]["ci95"] or [None, None]), d["avg_dead_conv"]["mean"],
                             d["avg_dead_conv"]["std"], d["dead_fraction"]["mean"], d["dead_fraction"]["std"]])
    return csv_text(header, rows)


# ----------------------------------------------------------------------------- human tables

HEADERS = ["rank", "method", "best accuracy [95% CI] (depth)", "deepest accuracy [95% CI] (depth)",
           "retention [95% CI]", "collapse depth (seed range)",
           "dead fraction", "half-dead depth (seed range)", "runs (seeds)", "failed"]


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _depth_stat(row: dict, depth) -> dict | None:
    return next((d for d in row["depths"] if d["depth"] == depth), None)


def interval_pct(ci) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def depth_text(value, span) -> str:
    def one(v):
        return "never" if v is None else str(v)

    return one(value) + ("" if not span or span[0] == span[1] else f" ({one(span[0])}–{one(span[1])})")


def rank_text(row: dict) -> str:
    if row["baseline"]:
        return "baseline"
    return ("=" if row["tied"] else "") + str(row["rank"]) + (" (1 seed)" if row["single_seed"] else "")


def human_rows(tab: dict) -> list[list[str]]:
    out = []
    for row in tab["rows"]:
        s, ci = row["scores"], row["score_intervals"]
        best = _depth_stat(row, s["best_depth"])
        best_text = "–" if s["best_accuracy"] is None else (
            f"{100 * s['best_accuracy']:.1f}%" + interval_pct(best and best["accuracy"]["ci95"]) +
            f" (d{s['best_depth']})")
        deepest_text = f"{pct(s['deepest_accuracy'])}{interval_pct(ci['deepest_accuracy'])} (d{s['deepest_depth']})"
        failed = sum(row["failures"].values())
        failed_text = "0" if not failed else f"{failed} (" + ", ".join(
            f"{n} {k}" for k, n in row["failures"].items() if n) + ")"
        retention = "–" if s["retention"] is None else f"{s['retention']:.2f}" + (
            "" if not ci["retention"] else f" [{ci['retention'][0]:.2f}, {ci['retention'][1]:.2f}]")
        out.append([
            rank_text(row),
            row["name"] + (f" {ACTIVATION_MARK}" if row.get("activation") else "")
            + (" (baseline)" if row["baseline"] else ""),
            best_text,
            deepest_text,
            retention,
            depth_text(s["collapse_depth"], ci["collapse_depth"]),
            pct(s["mean_dead_fraction"]),
            depth_text(s["half_dead_depth"], ci["half_dead_depth"]),
            f"{row['runs']} ({len(row['seeds'])})",
            failed_text,
        ])
    return out


def markdown(sections: list[dict]) -> str:
    """The README section: one table per (protocol version, data set). ``sections``: see leaderboard.render."""
    if not sections:
        return "_No records yet: add finished runs with `capsbench leaderboard add RUN_DIR`, then " \
               "`capsbench leaderboard build`._\n"
    out = []
    for sec in sections:
        out.append(f"### {sec['protocol']} v{sec['protocol_version']} (leaderboard {sec['version']})\n")
        folder = sec["folder"]
        out.append(f"Files: [`leaderboard.csv`]({folder}/leaderboard.csv) · [`depths.csv`]({folder}/depths.csv) · "
                   f"[`leaderboard.json`]({folder}/leaderboard.json) · [figures](index.html)\n")
        out.append(f"Ran on: {provenance.text(sec['provenance'])}\n")
        for dataset, tab in sorted(sec["tables"].items()):
            chance = "" if tab["chance"] is None else f", chance {pct(tab['chance'])}"
            out.append(f"#### {dataset} ({tab['num_classes'] or '?'} classes{chance})\n")
            out.append(md_table(HEADERS, human_rows(tab), align="rl" + "r" * (len(HEADERS) - 2)))
            for row in tab["rows"]:
                if row.get("activation"):
                    out.append(f"{ACTIVATION_MARK} {row['name']}: activation: {row['activation']}\n")
            # the figure inline: a forge renders the README, not index.html
            out.append(f"![accuracy and dead capsules against depth on {dataset}]({folder}/{dataset}.png)\n")
    return "\n".join(out).rstrip("\n") + "\n"
