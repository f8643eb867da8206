"""The remedies view of a protocol version: each routing x remedy at depth, next to the baselines at matched depth.

Built by ``capsbench leaderboard build`` for a protocol version with at least one capsule record whose
config has a remedy on (``capsbench.models.remedies.remedy_label`` is not ``"none"``); a version
without one gets no view, so its built files do not change. Per data set:

- one row per capsule row of the leaderboard (``scores.aggregate``: a method and config variant),
  labelled by its routing and remedy; rows whose routing and remedy agree but whose configs differ
  otherwise (a control or variant arm) add their arm (``capsbench.report.arms.arm_of``: "default",
  "control (uniform coefficients)", "renormalise=True"), and the leaderboard's variant suffix if that
  still leaves two alike;
- its ``collapse_depth`` and ``half_dead_depth`` with their seed ranges, and ``retention`` and
  ``deepest_accuracy`` with their 95% t-intervals over seeds: the leaderboard's own scores and
  intervals (``capsbench.results.scores``, ``capsbench.intervals``), not recomputed differently here;
- ``vs_plain``: its deepest accuracy (and interval) over the best accuracy of its routing's plain preset
  row (``none``, at any depth), so rows with different depths compare against one line: a screened
  remedy at chance at both of its depths keeps a retention near 1 but not this;
- the baselines (CNN and ViT, ``baselines/``) *at matched depth*: their scores recomputed from their
  records at the depths the capsule rows of that data set cover, where a baseline's depth is its
  number of residual or transformer blocks (the same number of stacked layers). A baseline has no
  capsules, so its half-dead depth does not apply (shown as ``n/a``).

Outputs: ``<protocol>/v<N>/remedies.csv``, a Markdown section in the README, and
``<protocol>/v<N>/<dataset>-remedies.png`` (accuracy and dead capsules against depth, a row of panels per routing
with the matched baselines in each: ``capsbench.report.remedies_figure``).

Example::

    view = remedies_view(tables, entries)      # tables = scores.aggregate(entries)
    view["digits"]["rows"][0]["routing"], view["digits"]["rows"][0]["remedy"]   # 'dynamic', 'init=length'
"""

from __future__ import annotations

from html import escape

from capsbench.models.remedies import remedy_label
from capsbench.report import leaderboard_tables as tables
from capsbench.report.arms import DEFAULT_ARM, arm_of
from capsbench.report.markdown import md_table
from capsbench.results.scores import depth_stats, score_intervals, scores

# "depths" because rows cover different depths (a screened remedy only 10 and 20): retention and the collapse depth
# are over a row's own depths, so a remedy at chance at both of them can keep a "retention" near 1 (hence the
# column "deepest / plain's best", one line per routing)
HEADERS = ["routing", "remedy", "depths", "collapse depth (seed range)", "half-dead depth (seed range)",
           "retention [95% CI]", "deepest accuracy [95% CI] (depth)", "deepest / plain's best [95% CI]",
           "runs (seeds)"]
CSV_KEYS = ("collapse_depth", "half_dead_depth", "retention", "deepest_accuracy")
PLAIN = ("none", f"none · {DEFAULT_ARM}")  # a routing's plain preset, as its row is labelled


def applies(entries: list[dict]) -> bool:
    """Whether a protocol version's records call for a remedies view (a capsule record with a remedy on)."""
    return any(not e["baseline"] and remedy_label(e["config"]) != "none" for e in entries)


def _row_entries(entries: list[dict], dataset: str, row: dict, depths: set[int] | None = None) -> list[dict]:
    return [e for e in entries if e["dataset"] == dataset and e["method"] == row["method"]
            and e["variant"] == row["variant"] and (depths is None or e["depth"] in depths)]


def _capsule_row(row: dict, group: list[dict], clashes: set[tuple[str, str]]) -> dict:
    routing, remedy = group[0]["routing"], remedy_label(group[0]["config"])
    # a routing's control and variant arms (long-cpu) share its remedy: named by their arm, as the questions name them
    shown = remedy + (f" · {arm_of(group[0]['config'].get('model') or {})}" if (routing, remedy) in clashes else "")
    return {**row, "routing": routing, "remedy": shown, "name": f"{routing} · {shown}"}


def _distinct(rows: list[dict]) -> list[dict]:
    """Rows whose labels still agree (configs that differ beyond routing options) get the variant hash too."""
    names = [r["name"] for r in rows]
    return [r if names.count(r["name"]) == 1 else
            {**r, "remedy": f"{r['remedy']} [{r['variant'][:6]}]", "name": f"{r['name']} [{r['variant'][:6]}]"}
            for r in rows]


def _matched_baseline(row: dict, group: list[dict], num_classes: int | None) -> dict | None:
    if not group:
        return None
    depths = depth_stats(group)
    return {**row, "routing": row["method"], "remedy": "baseline", "name": f"{row['method']} · matched depth",
            "runs": len(group), "ok": sum(e["status"] == "ok" for e in group),
            "seeds": sorted({e["seed"] for e in group}), "depths": depths, "scores": scores(depths, num_classes),
            "score_intervals": score_intervals(group, num_classes)}


def _with_vs_plain(rows: list[dict]) -> list[dict]:
    """Each capsule row with ``vs_plain``: its deepest accuracy (and interval) over its plain preset's best.

    None where the routing has no plain preset row, or two (rows alike but for their variant hash: which one
    would be arbitrary), or where the plain preset's best accuracy is 0."""
    plain: dict[str, list[dict]] = {}
    for row in rows:
        if row["remedy"] in PLAIN:
            plain.setdefault(row["routing"], []).append(row)
    out = []
    for row in rows:
        refs = plain.get(row["routing"], [])
        best = refs[0]["scores"]["best_accuracy"] if len(refs) == 1 else None
        deepest, ci = row["scores"]["deepest_accuracy"], row["score_intervals"]["deepest_accuracy"]
        vs = None
        if best and deepest is not None:
            vs = {"value": deepest / best, "ci95": [ci[0] / best, ci[1] / best] if ci else None,
                  "plain_best": best, "plain_best_depth": refs[0]["scores"]["best_depth"]}
        out.append({**row, "vs_plain": vs})
    return out


def remedies_view(aggregated: dict[str, dict], entries: list[dict]) -> dict[str, dict]:
    """``{dataset: {"rows", "depths", "num_classes", "chance", "conv_types", "dead_threshold"}}`` (module docstring)."""
    out = {}
    for dataset, tab in sorted(aggregated.items()):
        capsule = [(row, _row_entries(entries, dataset, row)) for row in tab["rows"] if not row["baseline"]]
        if not capsule:
            continue
        keys = [(group[0]["routing"], remedy_label(group[0]["config"])) for _, group in capsule]
        clashes = {k for k in keys if keys.count(k) > 1}
        rows = sorted(_distinct([_capsule_row(row, group, clashes) for row, group in capsule]),
                      key=lambda r: (r["routing"], not r["remedy"].startswith("none"),
                                     r["remedy"] not in PLAIN, r["remedy"]))
        rows = _with_vs_plain(rows)
        depths = {d["depth"] for row in rows for d in row["depths"]}
        for row in tab["rows"]:
            if row["baseline"]:
                matched = _matched_baseline(row, _row_entries(entries, dataset, row, depths), tab["num_classes"])
                rows += [matched] if matched else []
        out[dataset] = {**{k: tab[k] for k in ("num_classes", "chance", "conv_types", "dead_threshold")},
                        "depths": sorted(depths), "rows": rows}
    return out


def human_rows(view_tab: dict) -> list[list[str]]:
    out = []
    for row in view_tab["rows"]:
        s, ci = row["scores"], row["score_intervals"]
        retention = "–" if s["retention"] is None else f"{s['retention']:.2f}" + (
            "" if not ci["retention"] else f" [{ci['retention'][0]:.2f}, {ci['retention'][1]:.2f}]")
        half_dead = "n/a" if row["baseline"] else tables.depth_text(s["half_dead_depth"], ci["half_dead_depth"])
        vs = row.get("vs_plain")
        vs_plain = "n/a" if row["baseline"] else "–" if vs is None else f"{vs['value']:.2f}" + (
            "" if not vs["ci95"] else f" [{vs['ci95'][0]:.2f}, {vs['ci95'][1]:.2f}]")
        out.append([
            row["routing"],
            row["remedy"],
            ", ".join(str(d["depth"]) for d in row["depths"] if d["ok"]),
            tables.depth_text(s["collapse_depth"], ci["collapse_depth"]),
            half_dead,
            retention,
            f"{tables.pct(s['deepest_accuracy'])}{tables.interval_pct(ci['deepest_accuracy'])} (d{s['deepest_depth']})",
            vs_plain,
            f"{row['runs']} ({len(row['seeds'])})",
        ])
    return out


def csv_text(view: dict[str, dict]) -> str:
    header = ["dataset", "routing", "remedy", "method", "variant", "baseline", "deepest_depth", *CSV_KEYS,
              *(f"{k}_{end}" for k in CSV_KEYS for end in ("low", "high")),
              "deepest_vs_plain", "deepest_vs_plain_low", "deepest_vs_plain_high", "runs", "seeds", "matched_depths"]
    rows = []
    for dataset, tab in sorted(view.items()):
        for row in tab["rows"]:
            bounds = [(row["score_intervals"][k] or [None, None])[end] for k in CSV_KEYS for end in (0, 1)]
            vs = row.get("vs_plain") or {}
            vs_plain = [vs.get("value"), *(vs.get("ci95") or [None, None])]
            rows.append([dataset, row["routing"], row["remedy"], row["method"], row["variant"],
                         str(row["baseline"]).lower(), row["scores"]["deepest_depth"],
                         *(row["scores"][k] for k in CSV_KEYS), *bounds, *vs_plain, row["runs"],
                         " ".join(map(str, row["seeds"])), " ".join(map(str, tab["depths"]))])
    return tables.csv_text(header, rows)


def figure_path(folder: str, dataset: str) -> str:
    return f"{folder}/{dataset}-remedies.png"


def markdown(sections: list[dict]) -> str:
    """The README's remedies section: one table per (protocol version, data set) with a view ('' when none)."""
    out = []
    for sec in sections:
        view = sec.get("remedies")
        if not view:
            continue
        out.append(f"### {sec['protocol']} v{sec['protocol_version']}: remedies\n")
        out.append(f"Routing x remedy ([`remedies.csv`]({sec['folder']}/remedies.csv); remedies: "
                   "`capsbench/models/remedies.py`, docs/remedies.md). Collapse and half-dead depth: the range over "
                   "seeds; retention and deepest accuracy: 95% interval over seeds; all four over the row's own depths "
                   "(a screened remedy has only 10 and 20), so the next column sets each row's deepest accuracy "
                   "against one line, its routing's plain preset's best accuracy at any depth. Baselines at matched "
                   "depth: scored on the depths the capsule rows cover, their depth being their number of blocks.\n")
        for dataset, tab in sorted(view.items()):
            out.append(f"#### {dataset}: remedies (depths {', '.join(map(str, tab['depths']))})\n")
            out.append(md_table(HEADERS, human_rows(tab), align="lll" + "r" * (len(HEADERS) - 3)))
            out.append(f"![remedies on {dataset}: accuracy and dead capsules against depth]"
                       f"({figure_path(sec['folder'], dataset)})\n")
    return "\n" + "\n".join(out).rstrip("\n") + "\n" if out else ""


def html(sections: list[dict]) -> str:
    """The page's remedies tables, static HTML ('' when no section has a view, so the page is unchanged)."""
    parts = []
    for sec in sections:
        for dataset, tab in sorted((sec.get("remedies") or {}).items()):
            head = "".join(f"<th>{escape(h)}</th>" for h in HEADERS)
            body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>"
                           for cells in human_rows(tab))
            title = f"{sec['protocol']} v{sec['protocol_version']} · {dataset}"
            png = figure_path(sec["folder"], dataset)
            parts.append(f"<h3>{escape(title)}</h3>\n"
                         f'<table class="remedies"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n'
                         f'<img src="{escape(png)}" alt="remedies on {escape(dataset)}">')
    if not parts:
        return ""
    intro = ("<p>Each routing x remedy: collapse and half-dead depth (range over seeds), retention and deepest "
             "accuracy (95% interval over seeds), each over the row's own depths; deepest accuracy over the plain "
             "preset's best; baselines scored at the depths the "
             "capsule rows cover.</p>")
    return "\n<h2>Remedies</h2>\n" + intro + "\n" + "\n".join(parts)
