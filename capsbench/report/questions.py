"""The answers to the long-cpu protocol's pre-registered questions 1-8 from a sweep folder.

The rules are docs/long-protocol.md's ("Pre-registered"), applied as written; where the text leaves
a choice open, the choice made here is named in ``INTERPRETATIONS`` and printed with the answers.
Per-run facts (birth, death, causes) come from ``lifecycle.run_facts``; this module groups runs by
method (``routing``), arm (the method's default, its uniform-coefficient control, or a variant) and
depth, and decides. A decision needs ``REQUIRED_SEEDS`` finished runs; with fewer the answer is
``undecided (needs N more seeds)``. Unfinished, diverged and failed runs never enter a decision;
they are listed. ``plan`` (the sweep specs of the protocol) says which planned runs are missing.

Example::

    answers = answer_questions([Path("runs/long_cpu")], plan=plan_runs(DEFAULT_PLAN))
    answers["q1"][0]["answer"]       # 'no', 'yes' or 'undecided (needs 2 more seeds)'
"""

from __future__ import annotations

import posixpath
import statistics
from collections import defaultdict
from pathlib import Path

from capsbench.intervals import geometric_interval, mean_std, t_interval, welch_interval
from capsbench.models.remedies import added_remedies
from capsbench.report.arms import CONTROL_ARM, DEFAULT_ARM, arm_of
from capsbench.report.lifecycle import run_facts
from capsbench.report.rundir import RunDir, collect_rows

PROTOCOL = "long-cpu"
# the questions were pre-registered for this MAJOR version; a later version changes what a run means (its own
# pre-registration), so its runs never join these answers even when they share a sweep folder
PROTOCOL_VERSION = "1"
REQUIRED_SEEDS = 3
SCREENING_DEPTHS = (6, 10)  # questions 5 and 6
SCREENING_SEED = 0
CHANGED_DEAD = 2.0  # question 5: final avg_dead_conv differs by >= 2 types
CHANGED_ACCURACY = 0.10  # question 5: test accuracy differs by >= 10 points
CV_DEPENDS, CV_INDEPENDENT, NEAR_UNIFORM = 0.05, 0.01, 0.99  # question 7
UNFINISHED = "unfinished"  # started, no record: running now, or interrupted (capsbench status tells which)
FLOOR = "uniform"  # the method-independent floor routing of question 6
# every pre-registered seed in and still undecided: the full-scale protocol decides
UNDECIDED_FULL = "undecided (seeds disagree or the interval reaches 0)"
PLAN_SPECS = ("screening.yaml", "confirmation.yaml", "confirmation_arms.yaml")

INTERPRETATIONS = [
    "A decision uses finished runs with status ok only; diverged, failed and unfinished runs are listed, never "
    f"counted, so each is a missing seed. With more than {REQUIRED_SEEDS} seeds, question 1's '2 of 3' reads "
    "'at least two thirds'.",
    "Question 4: a dying type gets every category whose rule holds (the rules overlap: e.g. routing collapse "
    "with a term category); a method's answer is the category met by the most of its dying types (ties: all "
    "named). 'variance blow-up' needs cost/mass to grow (relative change > 0) by more than the signed relative change "
    "of mass; 'mass collapse' compares their absolute values; relative changes divide by |value at epoch 1|.",
    "Question 4 'upstream': the layer below had median activation >= 0.05 at epoch 1 and below 0.05 at some "
    "epoch up to the type's epoch of death.",
    "Question 4 'hidden by BatchNorm' (VB with its activation BN): counted over every stacked type at the last "
    "epoch, sigmoid(mean logit before the BN) <= 0.01 < sigmoid(mean logit after it); such a type is not dead "
    "by eq. 13 and so never among the dying.",
    "Question 6: the Welch interval's degrees of freedom are rounded down (wider, conservative).",
    "Question 7: 'the majority of its stacked layers' is more than half of them; 'near-uniform' is a separate "
    "label (entropy >= 0.99 in the majority of stacked layers in every seed).",
]


def plan_runs(spec_paths) -> dict[str, dict]:
    """Planned runs of the protocol's sweep specs: folder label -> {routing, arm, depth, seed, spec, preset}."""
    from omegaconf import OmegaConf

    from capsbench import spec

    out: dict[str, dict] = {}
    for path in spec_paths:
        for run in spec.load(path):
            model = OmegaConf.to_container(run.config.model, resolve=True)
            out[run.label] = {  # a run in several specs: the last spec named (the confirmation) gives its command
                "routing": str(model["routing"]), "arm": arm_of(model), "depth": int(model["depth"]),
                "seed": run.seed, "spec": Path(path).as_posix(), "preset": run.point.get("extends"),
            }
    return out


def default_plan() -> list[Path]:
    """The protocol's sweep specs in this checkout (specs/long/), or none when capsbench is installed alone."""
    folder = Path(__file__).resolve().parents[2] / "specs" / "long"
    return [folder / name for name in PLAN_SPECS if (folder / name).exists()]


def is_protocol_run(cfg: dict) -> bool:
    """Whether a run's resolved config is of the pre-registered protocol version."""
    return cfg.get("protocol") == PROTOCOL and str(cfg.get("protocol_version")) == PROTOCOL_VERSION


def _run_row(run: RunDir) -> dict | None:
    cfg = run.config()
    if not is_protocol_run(cfg):
        return None
    model = cfg.get("model") or {}
    record = run.record
    history = run.history
    epochs_done = max((int(line["epoch"]) for line in history if "epoch" in line), default=0)
    row = {
        "run": run.path.name, "routing": str(model.get("routing")), "arm": arm_of(model),
        "depth": int(model.get("depth", 0)), "seed": int(cfg.get("seed", 0)),
        "epochs": int((cfg.get("train") or {}).get("epochs", 0)), "epochs_done": epochs_done,
        "status": record["status"] if record is not None else UNFINISHED,
        "test_accuracy": None, "avg_dead_conv": None,
    }
    if record is not None:
        row["test_accuracy"] = record["metrics"].get("test_accuracy")
        row["avg_dead_conv"] = record["metrics"].get("avg_dead_conv")
    if model.get("arch", "capsnet") != "capsnet":  # a baseline in the same sweep folder: no capsules to ask about
        row["status"] = f"not a capsule network ({model.get('arch')}, {row['status']})"
    elif added_remedies(cfg):  # a remedies run in the same sweep folder (docs/remedies.md): judged there, not here
        row["status"] = f"a remedy run ({added_remedies(cfg)}, {row['status']})"
    if row["status"] == "ok":
        facts = run_facts(run)
        if facts["last_epoch"] != row["epochs"]:
            row["status"] = f"incomplete activations (last epoch {facts['last_epoch']})"
        row["facts"] = facts
        for key in ("dying", "born_dead", "born_weak", "born_alive", "relative_dead_last", "hidden_by_bn"):
            row[key] = facts[key]
    return row


def collect(paths: list[Path], log=None) -> list[dict]:
    """A row per long-cpu run folder at or below ``paths`` (others skipped with a warning)."""
    return collect_rows(paths, _run_row, f"{PROTOCOL} v{PROTOCOL_VERSION} run",
                        f" (protocol: {PROTOCOL}, protocol_version: '{PROTOCOL_VERSION}' in config)", log)


def _groups(rows) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row["status"] == "ok":
            out[(row["routing"], row["arm"], row["depth"])].append(row)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in sorted(out.items(), key=lambda kv: _order(kv[0]))}


def _order(key):
    routing, arm, depth = key
    return (routing == FLOOR, routing, arm != DEFAULT_ARM, arm != CONTROL_ARM, arm, depth)


def _seeds(n: int) -> str:
    return f"{n} more seed{'s' if n != 1 else ''}"


def _needs(n: int) -> str:
    return f"undecided (needs {_seeds(REQUIRED_SEEDS - n)})"


def _interval(values):
    iv = t_interval(values, low=0.0)
    return None if iv is None else [round(v, 6) for v in iv]


def full_scale_command(routing: str, arm: str, depth: int, presets: dict) -> str:
    """The paper protocol (MNIST, 3 seeds) for one method, arm and depth: what decides a question the CPU cannot."""
    preset = presets.get((routing, arm)) or (f"protocols/methods/{routing}.yaml" if arm == DEFAULT_ARM else None)
    if preset is None:
        return f"no preset known for {routing} ({arm}): run the paper protocol with its routing options"
    return (f"capsbench run specs/self_depth_sweep.yaml 'sweep.extends=[{preset}]' 'sweep.data.name=[mnist]' "
            f"'sweep.model.depth=[{depth}]'")


def _presets(plan: dict | None) -> dict:
    """(routing, arm) -> its preset file relative to specs/ (the plan's are relative to specs/long/)."""
    return {(p["routing"], p["arm"]): posixpath.normpath("long/" + p["preset"])
            for p in (plan or {}).values() if p.get("preset")}


def question1(groups, presets: dict | None = None) -> list[dict]:
    out = []
    for (routing, arm, depth), runs in groups.items():
        dying = [r["dying"] for r in runs]
        n = len(dying)
        mean = mean_std(dying)[0]
        interval = _interval(dying)
        with_dying = sum(d >= 1 for d in dying)
        if n < REQUIRED_SEEDS:
            answer = _needs(n)
        elif with_dying * 3 >= 2 * n and interval is not None and interval[0] > 0:
            answer = "yes"
        elif with_dying == 0:
            answer = "no"
        else:
            answer = UNDECIDED_FULL
        full = full_scale_command(routing, arm, depth, presets or {}) if answer == UNDECIDED_FULL else None
        out.append({"routing": routing, "arm": arm, "depth": depth, "seeds": [r["seed"] for r in runs],
                    "dying": dying, "born_dead": [r["born_dead"] for r in runs],
                    "born_weak": [r["born_weak"] for r in runs], "mean": mean, "ci95": interval, "answer": answer,
                    "full_scale": full})
    return out


def _dying_types(runs):
    for r in runs:
        for layer in r["facts"]["layers"]:
            for k, t in enumerate(layer["types"]):
                if t["death_epoch"] is not None:
                    yield r, layer, k, t


def question2(groups) -> list[dict]:
    out = []
    for (routing, arm, depth), runs in groups.items():
        epochs = sorted(t["death_epoch"] for _, _, _, t in _dying_types(runs))
        out.append({"routing": routing, "arm": arm, "depth": depth, "epochs": epochs,
                    "median": statistics.median(epochs) if epochs else None,
                    "range": [epochs[0], epochs[-1]] if epochs else None})
    return out


def question3(groups) -> list[dict]:
    out = []
    for (routing, arm, depth), runs in groups.items():
        layers: dict[int, dict] = {}
        for r in runs:
            for layer in r["facts"]["layers"]:
                entry = layers.setdefault(layer["position"], {"layer": layer["layer"], "position": layer["position"],
                                                             "l_over_D": round(layer["relative_position"], 4),
                                                             "dying": 0, "types": 0})
                entry["dying"] += sum(t["death_epoch"] is not None for t in layer["types"])
                entry["types"] += len(layer["types"])
        for entry in layers.values():
            entry["fraction"] = entry["dying"] / entry["types"] if entry["types"] else None
        out.append({"routing": routing, "arm": arm, "depth": depth, "seeds": len(runs),
                    "layers": [layers[p] for p in sorted(layers)]})
    return out


def question4(groups) -> list[dict]:
    """Per method and arm (all depths): how many dying types meet each category; hidden-by-BN counts."""
    per: dict[tuple, dict] = {}
    for (routing, arm, _depth), runs in groups.items():
        entry = per.setdefault((routing, arm), {"routing": routing, "arm": arm, "dying": 0, "categories": {},
                                                "unclassified": 0, "hidden_by_bn": 0})
        entry["hidden_by_bn"] += sum(r["hidden_by_bn"] for r in runs)
        for _, _, _, t in _dying_types(runs):
            entry["dying"] += 1
            causes = t.get("causes") or []
            entry["unclassified"] += not causes
            for cause in causes:
                entry["categories"][cause] = entry["categories"].get(cause, 0) + 1
    out = []
    for entry in per.values():
        top = max(entry["categories"].values(), default=0)
        entry["answer"] = (" and ".join(sorted(c for c, n in entry["categories"].items() if n == top)) if top
                           else ("no dying types" if not entry["dying"] else "no category applies"))
        out.append(entry)
    return out


def _screening_run(rows, routing, arm, depth):
    for r in rows:
        if (r["routing"], r["arm"], r["depth"], r["seed"], r["status"]) == (routing, arm, depth, SCREENING_SEED, "ok"):
            return r
    return None


def question5(rows) -> list[dict]:
    # arms of runs that are finished or under way: an excluded run (unplanned, a remedy, a baseline) names no arm
    arms = sorted({(r["routing"], r["arm"]) for r in rows
                   if r["arm"] != DEFAULT_ARM and r["status"] in ("ok", UNFINISHED)})
    out = []
    for routing, arm in arms:
        depths = []
        for depth in SCREENING_DEPTHS:
            base, other = _screening_run(rows, routing, DEFAULT_ARM, depth), _screening_run(rows, routing, arm, depth)
            if base is None or other is None:
                missing = [name for name, r in (("default", base), (arm, other)) if r is None]
                reasons = [f"missing seed-0 run: {', '.join(missing)}"]
                depths.append({"depth": depth, "changed": None, "reasons": reasons})
                continue
            reasons = []
            if (base["dying"] >= 1) != (other["dying"] >= 1):
                reasons.append(f"dying >= 1: default {base['dying'] >= 1}, arm {other['dying'] >= 1}")
            dead = (base["avg_dead_conv"] or 0.0, other["avg_dead_conv"] or 0.0)
            if abs(dead[1] - dead[0]) >= CHANGED_DEAD:
                reasons.append(f"avg_dead_conv {dead[0]:.2f} -> {dead[1]:.2f}")
            acc = (base["test_accuracy"] or 0.0, other["test_accuracy"] or 0.0)
            if abs(acc[1] - acc[0]) >= CHANGED_ACCURACY:
                reasons.append(f"test accuracy {100 * acc[0]:.1f}% -> {100 * acc[1]:.1f}%")
            depths.append({"depth": depth, "changed": bool(reasons), "reasons": reasons,
                           "default": _brief(base), "arm": _brief(other)})
        changed = [d["changed"] for d in depths]
        answer = ("changes an answer" if any(changed) else
                  "undecided (screening runs missing)" if None in changed else "no change")
        out.append({"routing": routing, "arm": arm, "depths": depths, "answer": answer})
    return out


def _brief(row):
    return {k: row[k] for k in ("dying", "avg_dead_conv", "test_accuracy")}


def question6(groups) -> list[dict]:
    out = []
    routings = sorted({k[0] for k in groups if k[0] != FLOOR})
    for routing in routings:
        for depth in SCREENING_DEPTHS:
            method = [r["test_accuracy"] for r in groups.get((routing, DEFAULT_ARM, depth), [])]
            for versus, key in (("own uniform-coefficient control", (routing, CONTROL_ARM, depth)),
                                ("uniform routing", (FLOOR, DEFAULT_ARM, depth))):
                other = [r["test_accuracy"] for r in groups.get(key, [])]
                interval = welch_interval(method, other)
                sides = ((len(method), routing), (len(other), versus))
                lacking = [f"{_seeds(REQUIRED_SEEDS - n)} of {who}" for n, who in sides if n < REQUIRED_SEEDS]
                if lacking:
                    answer = f"undecided (needs {' and '.join(lacking)})"
                elif interval[0] > 0:
                    answer = "beats"
                elif interval[1] < 0:
                    answer = "worse"
                else:
                    answer = "no difference shown"
                diff = (mean_std(method)[0] - mean_std(other)[0]) if method and other else None
                out.append({"routing": routing, "depth": depth, "versus": versus, "n": [len(method), len(other)],
                            "difference": diff, "ci95": None if interval is None else list(interval), "answer": answer})
    return out


def _majority(values, test) -> bool:
    vals = [v for v in values if v is not None]
    return bool(vals) and sum(test(v) for v in vals) * 2 > len(vals)


def question7(groups) -> list[dict]:
    out = []
    for (routing, arm, depth), runs in groups.items():
        seeds = []
        for r in runs:
            cvs = [layer["coefficient_cv_images"] for layer in r["facts"]["layers"]]
            ents = [layer["coefficient_entropy"] for layer in r["facts"]["layers"]]
            seeds.append({"seed": r["seed"], "cv": cvs, "entropy": ents,
                          "depends": _majority(cvs, lambda v: v >= CV_DEPENDS),
                          "independent": _majority(cvs, lambda v: v < CV_INDEPENDENT),
                          "near_uniform": _majority(ents, lambda v: v >= NEAR_UNIFORM)})
        labels = []
        if seeds and all(s["depends"] for s in seeds):
            labels.append("depends on the input")
        elif seeds and all(s["independent"] for s in seeds):
            labels.append("input-independent")
        else:
            labels.append("neither (cv between the thresholds, or mixed over seeds or layers)")
        if seeds and all(s["near_uniform"] for s in seeds):
            labels.append("near-uniform")
        provisional = "; ".join(labels)
        answer = provisional if len(runs) >= REQUIRED_SEEDS else f"{_needs(len(runs))}; so far: {provisional}"
        cv_all = [v for s in seeds for v in s["cv"] if v is not None]
        ent_all = [v for s in seeds for v in s["entropy"] if v is not None]
        out.append({"routing": routing, "arm": arm, "depth": depth, "seeds": seeds, "answer": answer,
                    "cv_range": [min(cv_all), max(cv_all)] if cv_all else None,
                    "entropy_range": [min(ent_all), max(ent_all)] if ent_all else None})
    return out


def relative_death(groups) -> list[dict]:
    """Secondary, reported only: relatively dead types at the last epoch, per run."""
    return [{"routing": k[0], "arm": k[1], "depth": k[2], "relative_dead_last": [r["relative_dead_last"] for r in runs]}
            for k, runs in groups.items()]


def gradient_flow(groups) -> list[dict]:
    """Secondary, reported only (not pre-registered): the gradient ratio at the first and last epoch, per seed,
    with the geometric mean over seeds and its 95% interval (a t-interval of log10)."""
    out = []
    for (routing, arm, depth), runs in groups.items():
        row = {"routing": routing, "arm": arm, "depth": depth, "seeds": [r["seed"] for r in runs]}
        for when in ("first", "last"):
            values = [r["facts"].get(f"gradient_ratio_{when}") for r in runs]
            no_gradient = sum(r["facts"].get(f"class_input_gradient_{when}") == 0 for r in runs)
            # a ratio of 0 (the gradient underflowed before the input) is an observation: it makes the geometric
            # mean 0 and leaves no interval of log10
            mean, interval, _ = (0.0, None, 0) if 0 in values else geometric_interval(values)
            row[when] = {"per_seed": values, "geometric_mean": mean, "no_gradient_at_class_input": no_gradient,
                         "ci95": None if interval is None else list(interval)}
        out.append(row)
    return out


def missing_runs(rows, plan: dict[str, dict]) -> dict:
    """Planned runs with no finished ok record here: not started, unfinished, or ended otherwise."""
    by_name = {r["run"]: r for r in rows}
    missing = []
    for label, info in sorted(plan.items(), key=lambda kv: (kv[1]["routing"], kv[1]["arm"], kv[1]["depth"],
                                                           kv[1]["seed"])):
        row = by_name.get(label)
        if row is not None and row["status"] == "ok":
            continue
        if row is None:
            state = "not started"
        elif row["status"] == UNFINISHED:
            state = f"unfinished: running or interrupted (epoch {row['epochs_done']} of {row['epochs']})"
        else:
            state = row["status"]
        missing.append({"run": label, "state": state, **info})
    return {"planned": len(plan), "finished": len(plan) - len(missing), "missing": missing}


def commands(missing: dict) -> list[str]:
    """One ``capsbench run`` per (spec, preset) with missing runs: it trains exactly those (finished ones skip)."""
    todo: dict[tuple, set] = defaultdict(set)
    for m in missing["missing"]:
        todo[(m["spec"], m["preset"])].add(m["depth"])
    out = []
    for (spec, preset), depths in sorted(todo.items()):
        spec_rel = "specs/long/" + Path(spec).name
        extends = f" 'sweep.extends=[{preset}]'" if preset else ""
        out.append(f"OMP_NUM_THREADS=1 capsbench run {spec_rel}{extends} "
                   f"'sweep.model.depth=[{', '.join(map(str, sorted(depths)))}]' --jobs 2")
    return out


def answer_questions(paths: list[Path], plan: dict[str, dict] | None = None, log=None) -> dict:
    """Every question's answers as plain data (what ``questions.json`` holds and the markdown shows)."""
    rows = collect(paths, log)
    for row in rows if plan else []:
        if row["run"] not in plan:  # e.g. a pilot with other settings: never mixed into an arm's seeds
            row["status"] = f"excluded: not a planned run ({row['status']})"
    groups = _groups(rows)
    missing = missing_runs(rows, plan) if plan else None
    return {
        "protocol": PROTOCOL, "protocol_version": PROTOCOL_VERSION,
        "required_seeds": REQUIRED_SEEDS,
        "interpretations": INTERPRETATIONS,
        "runs": [{k: v for k, v in r.items() if k != "facts"} for r in rows],
        "missing": missing,
        "commands": commands(missing) if missing else [],
        "q1": question1(groups, _presets(plan)),
        "q2": question2(groups),
        "q3": question3(groups),
        "q4": question4(groups),
        "q5": question5(rows),
        "q6": question6(groups),
        "q7": question7(groups),
        "relative_death": relative_death(groups),
        "gradient_flow": gradient_flow(groups),
        "per_type": {r["run"]: r["facts"] for r in rows if "facts" in r},
    }

