"""``capsbench report SWEEP_DIR --questions remedies``: the remedies verdicts as markdown, JSON and figures.

Writes, under ``out``::

    remedies.md                          rule S, the verdicts A/B/C per routing x remedy x depth, the deepest cure
                                         (docs/remedies.md's rules; paste into its Results)
    remedies.json                        the same as data, with every run's row
    remedies/<routing>-gradient.png      criterion C at a glance: rho per seed against depth, one line per arm
                                         (geometric mean), the band [0.01, 100] where the gradient "reaches"

Example::

    written = write_remedy_verdicts([Path("runs/long_cpu")], Path("/tmp/verdicts"), plan_specs=default_plan())
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from capsbench.io import write_text
from capsbench.report.markdown import details, fmt_ci, fmt_num, fmt_pct, md_table, table_or_note
from capsbench.report.questions import plan_runs
from capsbench.report.remedies_verdicts import (
    ACCURACY_SLACK,
    COLLAPSE,
    RHO_HIGH,
    RHO_LOW,
    SURVIVAL_DEPTH,
    geometric_mean,
    remedy_verdicts,
)
from capsbench.report.style import figure_style, line_styles, new_figure, save_png
from capsbench.results.run_record import finite


def gradient_figure(rows: list[dict], routing: str):
    """rho of every finished run of ``routing`` against depth: dots per seed, a line through the geometric means."""
    mine = [r for r in rows if r["routing"] == routing and r["status"] == "ok" and r.get("rho")]
    names = sorted({r["name"] for r in mine}, key=lambda n: (n != "none", n))
    styles = line_styles(names)
    fig = new_figure(7.5, 4.2)
    ax = fig.subplots()
    ax.axhspan(RHO_LOW, RHO_HIGH, color="#009E73", alpha=0.08, label=f"reaches: [{RHO_LOW:g}, {RHO_HIGH:g}]")
    for name in names:
        colour, marker = styles[name]
        runs = [r for r in mine if r["name"] == name]
        depths = sorted({r["depth"] for r in runs})
        ax.scatter([r["depth"] for r in runs], [r["rho"] for r in runs], color=colour, marker=marker, s=18, alpha=0.6)
        ax.plot(depths, [geometric_mean(r["rho"] for r in runs if r["depth"] == d) for d in depths], color=colour,
                marker=marker, label=name, linewidth=2.0 if name == "none" else 1.2)
    ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("stacked ConvCaps layers (depth)")
    ax.set_ylabel("rho = |grad conv1 input| / |grad class input|")
    ax.set_title(f"{routing}: gradient reaching the first stacked layer (criterion C), last sample of training")
    ax.legend(fontsize=7, ncol=2, loc="best")
    return fig


def _survives(value: bool | None) -> str:
    return "pending" if value is None else "survives" if value else "does not survive"


def _survival_rows(verdicts: dict) -> list[list]:
    return [[s["routing"], s["name"] + (" (plain preset)" if s["plain"] else ""), fmt_pct(s.get("test_accuracy")),
             fmt_num(s.get("dead_fraction")), f"**{_survives(s['survives'])}**", s["reason"] or "",
             "(reference)" if s["plain"] else "pending" if s["confirmed_by"] is None else s["confirmed_by"] or "no"]
            for s in verdicts["survival"]]


def _a_cell(v: dict) -> str:
    if v.get("symptom") == COLLAPSE:  # amendment 2: the symptom is the collapse, compared by accuracy
        return (f"plain collapsed ({fmt_pct(v['plain_accuracy'])}, dead {fmt_num(v['plain_dead_fraction'])}); "
                f"arm {fmt_pct(v['accuracy'])}: {v['A']}")
    return f"{fmt_num(v['dead_fraction'])} vs {fmt_num(v['plain_dead_fraction'])}: {v['A']}"


def _verdict_rows(verdicts: dict) -> list[list]:
    out = []
    for v in verdicts["verdicts"]:
        seeds = f"{len(v['seeds'])}" + (f" + {len(v['diverged'])} diverged" if v["diverged"] else "")
        verdict = v["verdict"] + (" (provisional)" if v["provisional"] else "") + (
            "; alive, not routing" if v["alive_not_routing"] else "")
        out.append([v["routing"], v["name"], v["depth"], seeds,
                    _a_cell(v),
                    f"{fmt_pct(v['accuracy'])} {fmt_ci(v['accuracy_ci95'], '.1f', 100.0)} vs A_ref "
                    + ("n/a" if v["a_ref"] is None else f"{fmt_pct(v['a_ref'])} (d{v['a_ref_depth']})")
                    + f": {v['B']}",
                    f"{', '.join(fmt_num(x, '.3g') for x in v['rho'])}: {v['C']}",
                    f"**{verdict}**",
                    " / ".join(fmt_num(v[k], ".3f") for k in ("deepest_p5", "deepest_p50", "deepest_entropy"))])
    return out


def remedies_markdown(verdicts: dict, figures: dict[str, str]) -> str:
    runs = verdicts["runs"]
    states = Counter(r["status"] for r in runs)
    out = ["# long-cpu: remedies verdicts", "",
           "Decided by the rules of [docs/remedies.md](remedies.md) (\"Pre-registered: when a remedy cures, and when "
           "it only hides the symptom\"), by `capsbench report SWEEP_DIR --questions remedies`. Intervals: 95% "
           f"Student-t over seeds; a verdict on fewer than {verdicts['required_seeds']} seeds is provisional.", "",
           "## Sweep", "",
           f"{len(runs)} capsule run(s) of protocol `{verdicts['protocol']}` v{verdicts['protocol_version']}: "
           + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + "."]
    stand_ins = sorted(r["run"] for r in runs if r.get("source") == "record")
    if stand_ins:
        out.append(f"{len(stand_ins)} of them read from their leaderboard records (`--records`: no run folder here; "
                   "final metrics only, so no mechanism terms): " + ", ".join(stand_ins) + ".")
    missing = verdicts.get("missing")
    if missing is None:
        out.append("No plan given (`--plan`): which planned runs are missing is not listed.")
    else:
        # a diverged run is a seed's result (RESULTS: the rules count it, the runner never re-runs it), so the
        # headline keeps it apart from the runs that are still to run
        diverged = [m for m in missing["missing"] if m["state"] == "diverged"]
        todo = [m for m in missing["missing"] if m["state"] != "diverged"]
        out.append(f"Planned by the remedies sweep specs: {missing['planned']} runs; finished (ok): "
                   f"{missing['finished']}; diverged (a result, counted by the rules): {len(diverged)}; "
                   f"still to run: {len(todo)}.")
        for title, group in (("runs still to run", todo), ("diverged runs", diverged)):
            if group:
                listing = md_table(["run", "routing", "arm file", "depth", "seed", "state"],
                                   [[m["run"], m["routing"], m["preset"], m["depth"], m["seed"], m["state"]]
                                    for m in group])
                out += ["", details(title, listing)]
    out += ["", "Where the pre-registered text leaves a choice open, this tool decides as follows:", ""]
    out += [f"- {line}" for line in verdicts["interpretations"]]

    out += ["", f"## Rule S: survival at depth {SURVIVAL_DEPTH} (screening, seed 0)", "",
            "Survives: test accuracy above chance + 5 points and mean dead fraction over stacked layers below 0.5. "
            "The survivors, the arms that keep their accuracy with half-dead stacked layers (amendment 3), and their "
            "routings' plain presets go to `specs/remedies/confirmation.yaml`; by amendment 5, the arms of a routing "
            "whose plain preset has no symptom at the screening depths go to depth 30 on seed 0 instead "
            "(`specs/remedies/confirmation_no_symptom.yaml`).", ""]
    out.append(table_or_note(["routing", "arm", "test accuracy", "dead fraction", "rule S", "why not",
                              "confirmed by"],
                             _survival_rows(verdicts), f"No screening run at depth {SURVIVAL_DEPTH} yet."))
    confirmed = [s for s in verdicts["survival"] if s["confirmed_by"] and not s["plain"]]
    if confirmed:
        out.append("To confirm: " + ", ".join(f"{s['routing']} · {s['name']} ({s['confirmed_by']})"
                                               for s in confirmed) + ".\n")
        files = [s["preset"] for s in confirmed if s["preset"]]
        if files:
            out.append("Their arm files, for `sweep.extends` of `specs/remedies/confirmation.yaml` (beside the plain "
                       f"presets of their routings): `{', '.join(files)}`.\n")

    out += ["", "## Verdicts (A, B, C)", "",
            "A: mean dead fraction of the arm vs the plain preset at that depth (gone: arm < 0.5 while plain >= 0.5); "
            "where the plain preset collapsed with live capsules (amendment 2), the arm's accuracy (gone: above chance "
            "+ 5 points). "
            "B: accuracy [95% CI] vs A_ref, the plain preset's best mean over depths 1-10 (restored: upper end >= "
            f"A_ref - 5 points). C: rho per seed (reaches: in [{RHO_LOW:g}, {RHO_HIGH:g}] in >= 2/3 of the seeds). "
            "Last column, reported only: the deepest stacked layer's activation p5 / p50 / coupling entropy.", ""]
    out.append(table_or_note(["routing", "arm", "depth", "seeds", "A: dead fraction (arm vs plain)", "B: accuracy",
                              "C: rho", "verdict", "deepest layer p5 / p50 / entropy"],
                             _verdict_rows(verdicts), "No remedy run finished yet."))

    flips = [v for v in verdicts["verdicts"] if v["verdict_if_B_on_mean"] != v["verdict"]]
    out += ["", "### Sensitivity: B on the mean (reported, not the registered rule)", "",
            "The verdicts that would change if B asked the mean accuracy, not the upper end of its 95% interval, to "
            "reach A_ref - 5 points. The registered rule decides; this lists where that choice matters.", ""]
    out.append(table_or_note(
        ["routing", "arm", "depth", "seeds", "mean accuracy vs A_ref - 5 points", "verdict", "with B on the mean"],
        [[v["routing"], v["name"], v["depth"], len(v["seeds"]),
          f"{fmt_pct(v['accuracy'])} vs {fmt_pct(v['a_ref'] - ACCURACY_SLACK)}", v["verdict"],
          v["verdict_if_B_on_mean"]] for v in flips],
        "No verdict depends on it."))

    costly = [v for v in verdicts["verdicts"] if v.get("cost_without_symptom")]
    out += ["", "### Cost where there is no symptom to cure (reported, not a verdict)", "",
            "Where the plain preset has no symptom, A says *no symptom at this depth* whatever the arm does. Listed "
            "here: those arms that cost accuracy there (mean more than 5 points below the plain preset's mean at that "
            "depth, B's margin), break the gradient where the plain preset's reaches (C), or diverge where it does "
            "not.", ""]
    out.append(table_or_note(
        ["routing", "arm", "depth", "seeds", "accuracy (arm vs plain)", "rho", "cost"],
        [[v["routing"], v["name"], v["depth"], len(v["seeds"]) + len(v["diverged"]),
          f"{fmt_pct(v['accuracy'])} vs {fmt_pct(v['plain_accuracy'])}",
          ", ".join(fmt_num(x, ".3g") for x in v["rho"]), "; ".join(v["cost_without_symptom"])] for v in costly],
        "No arm costs anything measurable where there is no symptom."))

    out += ["", "## Which remedy keeps capsules alive deepest?", ""]
    rows = [[d["routing"], d["answer"], fmt_pct(d.get("accuracy")),
             "n/a" if d.get("accuracy_cost_depth10") is None else f"{100 * d['accuracy_cost_depth10']:+.1f}",
             " vs ".join(fmt_num(m, ".0f") for m in d.get("peak_memory_mb_depth10") or [])]
            for d in verdicts["deepest"]]
    out.append(table_or_note(["routing", "deepest cure", "its accuracy there", "accuracy vs plain at depth 10 "
                              "(points)", "peak MB at depth 10 (arm vs plain)"], rows, "No verdict yet."))
    out.append("Step time of each remedy: the cost table of docs/remedies.md (measured side by side in one process "
               "per arm; the records' images/s were taken under uneven machine load).\n")

    out += ["", "## Figures", ""]
    out += [f"![{routing}: gradient ratio rho against depth]({path})\n" for routing, path in sorted(figures.items())]
    if not figures:
        out.append("_No gradient norms recorded._\n")
    out += ["", "## Runs", ""]
    rows = [[r["run"], r["routing"], r["name"], r["depth"], r["seed"], r["status"], fmt_pct(r.get("test_accuracy")),
             fmt_num(r.get("dead_fraction")), fmt_num(r.get("rho"), ".3g"), r.get("source", "folder")] for r in runs]
    out.append(details(f"{len(rows)} runs", md_table(
        ["run", "routing", "arm", "depth", "seed", "status", "test accuracy", "dead fraction", "rho", "read from"],
        rows)))
    return "\n".join(out).rstrip("\n") + "\n"


def write_remedy_verdicts(paths: list[Path], out: Path, plan_specs: list[Path] | None = None,
                          log=None, records: Path | None = None) -> list[Path]:
    """Judge the remedy runs at or below ``paths`` (and, with ``records``, the leaderboard records of runs without a
    finished folder); return the files written (figures, then JSON, then markdown)."""
    verdicts = remedy_verdicts(paths, plan=plan_runs(plan_specs) if plan_specs else None, log=log, records=records)
    out = Path(out)
    written: list[Path] = []
    figures: dict[str, str] = {}
    with figure_style():
        for routing in sorted({v["routing"] for v in verdicts["verdicts"]}):
            path = out / "remedies" / f"{routing}-gradient.png"
            judged = set(verdicts["judged_runs"])
            save_png(gradient_figure([r for r in verdicts["runs"] if r["run"] in judged], routing), path)
            written.append(path)
            figures[routing] = path.relative_to(out).as_posix()
    js = out / "remedies.json"
    write_text(js, json.dumps(finite(verdicts), indent=1, sort_keys=True, allow_nan=False) + "\n")
    md = out / "remedies.md"
    write_text(md, remedies_markdown(verdicts, figures))
    return written + [js, md]
