"""``capsbench report SWEEP_DIR --questions long-cpu``: the pre-registered answers as markdown, JSON and figures.

Writes, under ``out``::

    questions.md                             the answers to questions 1-8 (paste into docs/reproduction.md)
    questions.json                           the same as data, with every run's per-type facts
    questions/<method>-depth.png             test accuracy and dying types per stacked layer vs depth: the
                                             method, its uniform-coefficient control and the uniform routing
                                             (mean, 95% CI over seeds)
    questions/runs/<run>/activations.png     Figures 6-7 analogue: activation grid, first and last epoch
    questions/runs/<run>/mechanism.png       mechanism per layer over the epochs (and terms.png for EM/VB)

The per-run figures are drawn for seed 0 at the screening depths (6, 10), every arm, as question 8 asks.

Example::

    written = write_questions([Path("runs/long_cpu")], Path("/tmp/answers"), plan_specs=default_plan())
"""

from __future__ import annotations

import json
from pathlib import Path

from capsbench.io import write_text
from capsbench.report import activations, depth, mechanism
from capsbench.report.arms import CONTROL_ARM, DEFAULT_ARM
from capsbench.report.questions import (
    FLOOR,
    SCREENING_DEPTHS,
    SCREENING_SEED,
    UNFINISHED,
    answer_questions,
    plan_runs,
)
from capsbench.report.questions_markdown import questions_markdown
from capsbench.report.rundir import RunDir
from capsbench.report.style import figure_style, save_png
from capsbench.results.run_record import finite
from capsbench.results.scores import stats


def method_depth_data(runs: list[dict], routing: str, num_classes: int, conv_types: int, threshold: float) -> dict:
    """``depth.depth_figure`` data: the method's default, its control and the uniform routing, over seeds;
    the right panel shows question 1's dying types per stacked layer."""
    arms = [(routing, DEFAULT_ARM, routing), (routing, CONTROL_ARM, f"{routing}, uniform coefficients")]
    arms = arms[:1] if routing == FLOOR else arms + [(FLOOR, DEFAULT_ARM, "uniform routing (floor)")]
    lines = []
    for r, arm, name in arms:
        mine = [x for x in runs if x["routing"] == r and x["arm"] == arm and x["status"] != UNFINISHED]
        depths = sorted({x["depth"] for x in mine})
        if not depths:
            continue
        line = {"name": name, "baseline": False, "depth": depths, "accuracy": [], "accuracy_ci95": [], "dead": [],
                "dead_ci95": [], "seeds": [], "failed": []}
        for d in depths:
            at = [x for x in mine if x["depth"] == d]
            ok = [x for x in at if x["status"] == "ok"]
            acc = stats((x["test_accuracy"] for x in ok), 0.0, 1.0)
            dead = stats(x["dying"] / d for x in ok)  # question 1's count, per stacked layer
            line["accuracy"].append(acc["mean"])
            line["accuracy_ci95"].append(acc["ci95"])
            line["dead"].append(dead["mean"])
            line["dead_ci95"].append(dead["ci95"])
            line["seeds"].append(len(ok))
            line["failed"].append(len(at) - len(ok))
        lines.append(line)
    return {"title": f"{routing}: method vs doing nothing · protocol long-cpu (mean and 95% CI over seeds)",
            "chance": 1.0 / num_classes, "num_classes": num_classes, "conv_types": conv_types,
            "dead_threshold": threshold, "lines": lines,
            "dead_title": f"Types dying during training (A(1) > 0.05, A(E) ≤ {threshold:g})",
            "dead_ylabel": "dying types per stacked ConvCaps layer, mean"}


def _run_figures(run: RunDir, folder: Path) -> list[Path]:
    written = []
    chosen, _ = run.select_epochs(["first", "last"], "val")
    if chosen:
        path = folder / "activations.png"
        save_png(activations.activation_figure(activations.activation_data(run, chosen, "val")), path)
        written.append(path)
    if any(line.get("mechanism") for line in run.history):
        path = folder / "mechanism.png"
        save_png(mechanism.mechanism_figure(mechanism.mechanism_data(run, run.dead_threshold())), path)
        written.append(path)
        terms = mechanism.terms_data(run)
        if terms["terms"]:
            path = folder / "terms.png"
            save_png(mechanism.terms_figure(terms), path)
            written.append(path)
    return written


def write_questions(paths: list[Path], out: Path, plan_specs: list[Path] | None = None, log=None) -> list[Path]:
    """Answer the long-cpu questions for the runs at or below ``paths``; return the files written."""
    answers = answer_questions(paths, plan=plan_runs(plan_specs) if plan_specs else None, log=log)
    out = Path(out)
    written: list[Path] = []
    figures: dict[str, str] = {}
    run_figures: dict[str, list[str]] = {}
    by_name = {p.name: p for p in _run_paths(paths)}
    rows = answers["runs"]
    with figure_style():
        for routing in sorted({r["routing"] for r in rows if r["status"] == "ok"}):
            if routing == FLOOR and len({r["routing"] for r in rows}) > 1:
                continue  # drawn in every method's figure
            sample = RunDir(by_name[next(r["run"] for r in rows if r["routing"] == routing and r["status"] == "ok")])
            cfg = sample.config()
            data = method_depth_data(rows, routing, int((sample.record or {}).get("num_classes") or 10),
                                     int((cfg.get("model") or {}).get("capsule_types") or 16), sample.dead_threshold())
            path = out / "questions" / f"{routing}-depth.png"
            save_png(depth.depth_figure(data), path)
            written.append(path)
            figures[routing] = path.relative_to(out).as_posix()
        for r in rows:
            if r["status"] == "ok" and r["seed"] == SCREENING_SEED and r["depth"] in SCREENING_DEPTHS:
                drawn = _run_figures(RunDir(by_name[r["run"]]), out / "questions" / "runs" / r["run"])
                written += drawn
                run_figures[f"{r['routing']} ({r['arm']}), depth {r['depth']}: {r['run']}"] = [
                    p.relative_to(out).as_posix() for p in drawn]
    md = out / "questions.md"
    write_text(md, questions_markdown(answers, figures, run_figures))
    js = out / "questions.json"
    write_text(js, json.dumps(finite(answers), indent=1, sort_keys=True, allow_nan=False) + "\n")
    return written + [js, md]


def _run_paths(paths: list[Path]) -> list[Path]:
    from capsbench.results.store import find_runs

    finished, unfinished = find_runs(paths)
    return finished + unfinished
