"""The markdown page of the long-cpu answers (``questions.answer_questions``'s data, nothing recomputed).

Example::

    text = questions_markdown(answers, figures={"self": "questions/self-depth.png"}, runs_figures={...})
"""

from __future__ import annotations

from collections import Counter

from capsbench.report.markdown import details, fmt_ci, fmt_num, fmt_pct, md_table, table_or_note

NO_DYING = "No type died during training in any finished run."
RULE_YES = ("yes: dying >= 1 in at least 2 of 3 seeds and the 95% interval of mean dying above 0; "
            "no: dying = 0 in all 3 seeds")


def _ratio(q: dict) -> str:
    """A geometric mean with its interval, in 3 significant digits (ratios span many decades)."""
    if q["geometric_mean"] is None and q.get("no_gradient_at_class_input"):
        return f"no gradient at the class input ({q['no_gradient_at_class_input']} of {len(q['per_seed'])} seeds)"
    text = fmt_num(q["geometric_mean"], ".3g")
    return text if not q["ci95"] else f"{text} [{q['ci95'][0]:.3g}, {q['ci95'][1]:.3g}]"


def _status(answers: dict) -> list[str]:
    runs = answers["runs"]
    states = Counter(r["status"] for r in runs)
    out = [f"{len(runs)} run folder(s) of protocol `{answers['protocol']}` v{answers['protocol_version']}: "
           + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + "."]
    missing = answers.get("missing")
    if missing is None:
        out.append("No plan given (`--plan`): which planned runs are missing is not listed.")
        return out
    out.append(f"Planned by the protocol's sweep specs: {missing['planned']} runs; finished (ok): "
               f"{missing['finished']}; missing: {len(missing['missing'])}.")
    if missing["missing"]:
        by_arm = Counter((m["routing"], m["arm"], m["state"].split(" (")[0]) for m in missing["missing"])
        rows = [[r, a, s, n] for (r, a, s), n in sorted(by_arm.items())]
        listing = md_table(["method", "arm", "state", "runs"], rows)
        out.append("\n" + details("missing runs per method and arm", listing))
        out.append("Commands that train exactly the missing runs (finished runs are skipped; the sweep resumes):\n")
        out.append("```bash\n" + "\n".join(answers["commands"]) + "\n```")
    return out


def questions_markdown(answers: dict, figures: dict[str, str], run_figures: dict[str, list[str]]) -> str:
    n = answers["required_seeds"]
    out = ["# long-cpu: answers to the pre-registered questions",
           "",
           "Decided by the rules of [docs/long-protocol.md](long-protocol.md) (\"Pre-registered\"), by "
           "`capsbench report SWEEP_DIR --questions long-cpu`. Intervals: 95% Student-t over seeds "
           f"(`capsbench/intervals.py`); a decision needs {n} finished seeds.",
           "", "## Sweep", "", *_status(answers), "",
           "Where the pre-registered text leaves a choice open, this tool decides as follows:", ""]
    out += [f"- {line}" for line in answers["interpretations"]]

    out += ["", "## 1. Do a method's capsules die during training?", "", f"Rule: {RULE_YES}; otherwise undecided. "
            "Born dead (dead after epoch 1) and born weak (0.01 < A(1) <= 0.05) never count as dying.", ""]
    out.append(md_table(
        ["method", "arm", "depth", "seeds", "dying per seed", "born dead per seed", "born weak per seed",
         "mean dying [95% CI]", "answer"],
        [[q["routing"], q["arm"], q["depth"], len(q["seeds"]), q["dying"], q["born_dead"], q["born_weak"],
          f"{fmt_num(q['mean'])} {fmt_ci(q['ci95'])}", f"**{q['answer']}**"] for q in answers["q1"]]))

    full = [q for q in answers["q1"] if q.get("full_scale")]
    if full:
        out += ["Undecided with every pre-registered seed in: the full-scale protocol (paper, MNIST 28x28, 50 epochs, "
                "3 seeds; cost: docs/reproduction.md, GPU-hours estimated, not measured) decides it by the same rule "
                "(yes: dying >= 1 in >= 2 of 3 seeds and the interval above 0; no: 0 in all 3):", ""]
        out += [f"- {q['routing']} ({q['arm']}), depth {q['depth']}: `{q['full_scale']}`" for q in full]
    out += ["", "## 2. When do they die?", "", "Epochs of death (first epoch from which A stays <= 0.01) of every "
            "dying type, over all seeds.", ""]
    rows = [[q["routing"], q["arm"], q["depth"], len(q["epochs"]), fmt_num(q["median"], ".1f"),
             f"{q['range'][0]}-{q['range'][1]}"] for q in answers["q2"] if q["epochs"]]
    out.append(table_or_note(["method", "arm", "depth", "dying types", "median epoch", "range"], rows,
                             NO_DYING))

    out += ["", "## 3. In which layers?", "", "Dying types / types per stacked layer (summed over seeds), by "
            "relative position l/D.", ""]
    rows = [[q["routing"], q["arm"], q["depth"], q["seeds"],
             "; ".join(f"l/D={x['l_over_D']:.2f}: {x['dying']}/{x['types']}" for x in q["layers"])]
            for q in answers["q3"] if any(x["dying"] for x in q["layers"])]
    out.append(table_or_note(["method", "arm", "depth", "seeds", "dying / types per layer"], rows, NO_DYING))

    out += ["", "## 4. Through which term?", "", "Per dying type, every category whose rule holds (terms at epoch 1 "
            "and at the epoch of death); the answer is the category met by the most dying types. *Hidden by "
            "BatchNorm* (VB): stacked types at the last epoch that the activation BatchNorm keeps above 0.01.", ""]
    rows = [[q["routing"], q["arm"], q["dying"],
             ", ".join(f"{c}: {k}" for c, k in sorted(q["categories"].items())) or "none",
             q["unclassified"], q["hidden_by_bn"], f"**{q['answer']}**"] for q in answers["q4"]
            if q["dying"] or q["hidden_by_bn"]]
    out.append(table_or_note(["method", "arm", "dying types", "categories (types meeting each)", "no category",
                              "hidden by BatchNorm", "answer"], rows,
                             NO_DYING + " No type hidden by the activation BatchNorm."))

    out += ["", "## 5. Does a reference-faithful variant (or control) change the answer?", "",
            "Screening, seed 0, depths 6 and 10, against the method's default: a change is a different "
            "`dying >= 1`, final `avg_dead_conv` differing by >= 2 types, or test accuracy by >= 10 points.", ""]
    rows = []
    for q in answers["q5"]:
        cells = ["same" if d["changed"] is False else
                 f"{'changed' if d['changed'] else 'undecided'}: {'; '.join(d['reasons'])}" for d in q["depths"]]
        rows.append([q["routing"], q["arm"], *cells, f"**{q['answer']}**"])
    out.append(md_table(["method", "arm", "depth 6", "depth 10", "answer"], rows) if rows
               else "_No variant or control runs yet._\n")

    out += ["", "## 6. Does any method beat doing nothing at depth?", "",
            "Test accuracy of the method minus that of (a) its own uniform-coefficient control and (b) the `uniform` "
            "routing, mean over seeds with the 95% Welch interval: beats when the interval is above 0, worse when "
            "below, otherwise no difference shown.", ""]
    rows = [[q["routing"], q["depth"], q["versus"], f"{q['n'][0]} / {q['n'][1]}",
             "n/a" if q["difference"] is None else f"{100 * q['difference']:+.1f}",
             fmt_ci(q["ci95"], "+.1f", 100.0), f"**{q['answer']}**"] for q in answers["q6"]]
    out.append(md_table(["method", "depth", "versus", "seeds (method / other)", "difference (points)",
                         "95% Welch interval", "answer"], rows))

    out += ["", "## 7. Does routing depend on the input?", "",
            "At the last epoch, per stacked layer: coefficient variation across images (cv) and coupling entropy "
            "(normalised). Depends on the input: cv >= 0.05 in the majority of stacked layers in every seed; "
            "input-independent: cv < 0.01 there; near-uniform: entropy >= 0.99 there.", ""]
    rows = [[q["routing"], q["arm"], q["depth"], len(q["seeds"]), fmt_ci(q["cv_range"], ".3f"),
             fmt_ci(q["entropy_range"], ".3f"), f"**{q['answer']}**"] for q in answers["q7"]]
    out.append(md_table(["method", "arm", "depth", "seeds", "cv range (layers, seeds)", "entropy range",
                         "answer"], rows))

    out += ["", "## Relative death (secondary, reported only)", "",
            "Stacked types with A(E) <= 0.16 x their layer's mean type activation, per seed.", ""]
    rows = [[q["routing"], q["arm"], q["depth"], q["relative_dead_last"]] for q in answers["relative_death"]
            if any(q["relative_dead_last"])]
    out.append(table_or_note(["method", "arm", "depth", "relatively dead at the last epoch, per seed"], rows,
                             "No type is relatively dead at the last epoch in any finished run."))

    out += ["", "## Gradient flow (secondary, not pre-registered, reported only)", "",
            "rho = |dL/d input of conv1| / |dL/d input of the class capsules| (epoch means of the gradient-norm "
            "samples; ~1: the gradient reaches the bottom of the stack, << 1: it vanishes toward the input, >> 1: it "
            "explodes). Geometric mean over seeds with the 95% interval of log10 rho; the remedies' criterion C "
            "(docs/remedies.md) calls [0.01, 100] flowing.", ""]
    rows = [[q["routing"], q["arm"], q["depth"], len(q["seeds"]), _ratio(q["first"]), _ratio(q["last"]),
             ", ".join(fmt_num(v, ".3g") for v in q["last"]["per_seed"])] for q in answers.get("gradient_flow", [])]
    out.append(table_or_note(["method", "arm", "depth", "seeds", "rho, epoch 1", "rho, last epoch",
                              "rho per seed, last epoch"], rows, "No gradient norms recorded."))

    out += ["", "## 8. Figures", ""]
    for routing, path in sorted(figures.items()):
        out.append(f"![{routing}: test accuracy and dying types per layer against depth, with its control and the "
                   f"uniform routing]({path})\n")
    for run, paths in sorted(run_figures.items()):
        out.append(f"### {run}\n")
        out += [f"![{run}: {p.rsplit('/', 1)[-1][:-4]}]({p})\n" for p in paths]
    if not figures and not run_figures:
        out.append("_No finished runs to draw._\n")

    out += ["", "## Runs", ""]
    rows = [[r["run"], r["routing"], r["arm"], r["depth"], r["seed"], r["status"], f"{r['epochs_done']}/{r['epochs']}",
             fmt_pct(r["test_accuracy"]), r.get("dying", "n/a"), r.get("born_dead", "n/a")] for r in answers["runs"]]
    out.append(details(f"{len(rows)} run folders", md_table(
        ["run", "method", "arm", "depth", "seed", "status", "epochs", "test accuracy", "dying", "born dead"], rows)))
    return "\n".join(out).rstrip("\n") + "\n"
