"""The long-cpu pre-registered questions (capsbench/report/lifecycle.py, questions.py): every rule on
synthetic run folders with known answers, and a case beside each that flips it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from capsbench.cli import main
from capsbench.intervals import welch_interval
from capsbench.report import lifecycle
from capsbench.report.arms import CONTROL_ARM, DEFAULT_ARM, arm_of
from capsbench.report.questions import answer_questions, plan_runs
from tests.long_runs import EPOCHS, TYPES, dying_series, layer_series, write_long_run

REPO = Path(__file__).resolve().parent.parent


def answers(root: Path, plan=None) -> dict:
    return answer_questions([root], plan=plan, log=lambda line: None)


def pick(items: list[dict], **keys) -> dict:
    found = [i for i in items if all(i.get(k) == v for k, v in keys.items())]
    assert len(found) == 1, (keys, items)
    return found[0]


# --- per type: born, dead, epoch of death ----------------------------------------------------------

@pytest.mark.parametrize("a1, state", [(0.0501, "alive"), (0.05, "weak"), (0.0101, "weak"), (0.01, "dead"),
                                       (0.0, "dead")])
def test_born_state_thresholds(a1, state):
    assert lifecycle.born_state(a1) == state


def test_epoch_of_death_is_where_it_stays_dead():
    assert lifecycle.death_epoch([(1, 0.3), (2, 0.005), (3, 0.005), (4, 0.01)]) == 2
    assert lifecycle.death_epoch([(1, 0.3), (2, 0.005), (3, 0.3), (4, 0.005)]) == 4  # revived at 3: dies at 4
    assert lifecycle.death_epoch([(1, 0.3), (2, 0.005), (3, 0.005), (4, 0.0101)]) is None


def test_dying_born_dead_and_weak_are_counted_apart(tmp_path):
    acts = {"conv1": layer_series(dying_series(3), [0.005] * EPOCHS, [0.03, 0.03, 0.005, 0.005])}
    write_long_run(tmp_path, depth=1, acts=acts)
    run = answers(tmp_path)["runs"][0]
    assert (run["dying"], run["born_dead"], run["born_weak"], run["born_alive"]) == (1, 1, 1, TYPES - 2)
    assert answers(tmp_path)["q2"][0]["epochs"] == [3]


# --- question 1 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dying, answer", [
    ([2, 2, 1], "yes"),                      # 3 of 3 with dying, interval 1.67 +- 1.43 above 0
    ([1, 1, 0], "undecided (seeds disagree or the interval reaches 0)"),  # 2 of 3, but interval reaches 0
    ([0, 0, 0], "no"),
    ([0, 0, 1], "undecided (seeds disagree or the interval reaches 0)"),
])
def test_question1_rule(tmp_path, dying, answer):
    for seed, n in enumerate(dying):
        write_long_run(tmp_path, depth=1, seed=seed, acts={"conv1": layer_series(*[dying_series(2)] * n)})
    q = pick(answers(tmp_path)["q1"], routing="self", depth=1)
    assert q["dying"] == dying and q["answer"] == answer
    # undecided with all three seeds in: the full-scale command that decides it
    full = ("capsbench run specs/self_depth_sweep.yaml 'sweep.extends=[protocols/methods/self.yaml]' "
            "'sweep.data.name=[mnist]' 'sweep.model.depth=[1]'")
    assert (q["full_scale"] == full) == answer.startswith("undecided")


def test_question1_needs_three_seeds_and_ignores_unfinished(tmp_path):
    write_long_run(tmp_path, depth=1, seed=0)
    write_long_run(tmp_path, depth=1, seed=1)
    write_long_run(tmp_path, depth=1, seed=2, epochs_done=2)  # unfinished: not a seed yet
    a = answers(tmp_path)
    assert pick(a["q1"], depth=1)["answer"] == "undecided (needs 1 more seed)"
    assert pick(a["runs"], seed=2)["status"] == "unfinished"


# --- questions 2 and 3 ----------------------------------------------------------------------------

def test_question2_and_3_epochs_and_layer_positions(tmp_path):
    write_long_run(tmp_path, depth=2, seed=0, acts={"conv2": layer_series(dying_series(2), dying_series(4))})
    write_long_run(tmp_path, depth=2, seed=1, acts={"conv2": layer_series(dying_series(3))})
    a = answers(tmp_path)
    q2 = pick(a["q2"], depth=2)
    assert (q2["epochs"], q2["median"], q2["range"]) == ([2, 3, 4], 3, [2, 4])
    layers = pick(a["q3"], depth=2)["layers"]
    assert [(x["l_over_D"], x["dying"], x["types"]) for x in layers] == [(0.5, 0, 2 * TYPES), (1.0, 3, 2 * TYPES)]


# --- question 4: the categories -------------------------------------------------------------------

def terms(beta_a, cost, mass):
    return {"beta_a": [beta_a], "cost": [cost], "mass": [mass]}


@pytest.mark.parametrize("first, death, expected", [
    (terms(0, 1, 1), terms(-10, 2, 1), ["activation margin"]),
    (terms(0, 1, 1), terms(-1, 10, 1), ["variance blow-up"]),        # cost/mass x10, mass unchanged
    (terms(0, 10, 10), terms(-1, 1, 1), ["mass collapse"]),          # cost/mass unchanged, mass / 10
    (terms(0, 10, 10), terms(-1, 1.5, 1), ["variance blow-up", "mass collapse"]),  # +50% per unit, mass -90%
    (terms(0, 10, 10), terms(-1, 1, 2), ["mass collapse"]),          # per unit -50% (no growth), mass -80%
    (terms(0, 10, 10), terms(-1, 1, 5), ["cost (neither rule)"]),    # per unit -80%, mass -50%
])
def test_question4_term_categories(first, death, expected):
    assert lifecycle.term_causes(first, death, 0, "em") == expected


def test_question4_vb_names_cost_growth_entropy_growth():
    assert lifecycle.term_causes(terms(0, 1, 1), terms(-1, 10, 1), 0, "vb") == ["entropy growth"]


def mech_history(entropy_death=0.3, below_first=0.3, below_death=0.3, below_mid=None):
    """Epoch -> line for a conv2 that died at epoch 3 (layer below: conv1)."""
    mid = below_death if below_mid is None else below_mid
    p50 = {1: below_first, 2: mid, 3: below_death, 4: below_death}
    return {e: {"mechanism": {"conv1": {"activation_percentiles": {"p50": p50[e]}},
                              "conv2": {"coefficient_entropy": entropy_death if e == 3 else 0.9}}} for e in p50}


@pytest.mark.parametrize("history, expected", [
    (mech_history(), ["routing collapse"]),
    (mech_history(entropy_death=0.5), []),                       # entropy not below 0.5
    (mech_history(below_death=0.2), []),                          # the input fell too: not routing collapse
    (mech_history(entropy_death=0.9, below_mid=0.04, below_death=0.3), ["upstream"]),
    (mech_history(entropy_death=0.9, below_first=0.04, below_death=0.04), []),  # below 0.05 from the start
])
def test_question4_routing_collapse_and_upstream(history, expected):
    assert lifecycle.flow_causes(history, "conv2", "conv1", 1, 3, 0.3, 0.005) == expected


def test_question4_majority_and_hidden_by_batchnorm(tmp_path):
    acts = {"conv1": layer_series(dying_series(3), dying_series(3), dying_series(3))}
    first = {"beta_a": [0.0, 0.0, 0.0, 0.0], "cost": [1.0, 1.0, 1.0, 1.0], "mass": [1.0] * 4,
             "logit": [0.0] * 4, "logit_bn": [0.0] * 4}
    death = {"beta_a": [-10.0, -10.0, -1.0, 0.0], "cost": [2.0, 2.0, 10.0, 1.0], "mass": [1.0] * 4,
             "logit": [0.0] * 4, "logit_bn": [0.0] * 4}
    last = dict(death, logit=[-6.0, -6.0, -6.0, -4.0], logit_bn=[-6.0, -4.0, -4.0, -6.0])  # types 1, 2 hidden
    mech = {1: {"conv1": {"terms": first}}, 3: {"conv1": {"terms": death}}, 4: {"conv1": {"terms": last}}}
    write_long_run(tmp_path, routing="vb", depth=1, acts=acts, mech=mech)
    q = pick(answers(tmp_path)["q4"], routing="vb")
    assert q["categories"] == {"activation margin": 2, "entropy growth": 1}
    assert (q["answer"], q["dying"], q["hidden_by_bn"]) == ("activation margin", 3, 2)


# --- question 5 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("arm_kwargs, changed", [
    ({"accuracy": 0.9 - 0.11}, True),      # test accuracy 11 points lower
    ({"accuracy": 0.9 - 0.09}, False),
    ({"dead": [2, 2, 2, 2, 2, 2]}, True),  # avg_dead_conv 0 -> 2
    ({"dead": [1, 1, 1, 1, 1, 1]}, False),
    ({"acts": {"conv6": layer_series(dying_series(2))}}, True),  # dying >= 1 where the default has none
])
def test_question5_variant_changes_an_answer(tmp_path, arm_kwargs, changed):
    for depth in (6, 10):
        write_long_run(tmp_path, routing="em", depth=depth)
        write_long_run(tmp_path, routing="em", depth=depth, options={"renormalise": True},
                       **(arm_kwargs if depth == 6 else {}))
    q = pick(answers(tmp_path)["q5"], arm="renormalise=True")
    assert [d["changed"] for d in q["depths"]] == [changed, False]
    assert q["answer"] == ("changes an answer" if changed else "no change")


def test_question5_missing_screening_run_is_undecided(tmp_path):
    write_long_run(tmp_path, routing="em", depth=6, options={"renormalise": True})
    q = pick(answers(tmp_path)["q5"], arm="renormalise=True")
    assert q["answer"] == "undecided (screening runs missing)"


# --- question 6 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method, control, answer", [
    ([0.90, 0.91, 0.92], [0.50, 0.52, 0.51], "beats"),
    ([0.50, 0.52, 0.51], [0.90, 0.91, 0.92], "worse"),
    ([0.90, 0.80, 0.95], [0.88, 0.85, 0.90], "no difference shown"),
])
def test_question6_welch_rule(tmp_path, method, control, answer):
    for seed, (a, b) in enumerate(zip(method, control)):
        write_long_run(tmp_path, routing="dynamic", depth=6, seed=seed, accuracy=a)
        write_long_run(tmp_path, routing="dynamic", depth=6, seed=seed, accuracy=b, options={"coefficients": "uniform"})
    q = pick(answers(tmp_path)["q6"], routing="dynamic", depth=6, versus="own uniform-coefficient control")
    assert q["answer"] == answer
    assert q["ci95"] == pytest.approx(list(welch_interval(method, control)))
    floor = pick(answers(tmp_path)["q6"], routing="dynamic", depth=6, versus="uniform routing")
    assert floor["answer"] == "undecided (needs 3 more seeds of uniform routing)"


def test_welch_interval_matches_hand_computation():
    # equal spreads (variance 1, n 3): df = 4 exactly, t = 2.7764
    low, high = welch_interval([11.0, 12.0, 13.0], [1.0, 2.0, 3.0])
    half = 2.7764 * math.sqrt(2 / 3)
    assert (low, high) == pytest.approx((10 - half, 10 + half))
    # unequal spreads: df = 2.16, rounded down to 2 (t = 4.3027)
    low, high = welch_interval([0.9, 0.92, 0.91], [0.5, 0.6, 0.55])
    assert high - low == pytest.approx(2 * 4.3027 * math.sqrt((1e-4 + 25e-4) / 3))
    assert welch_interval([0.9], [0.5, 0.6]) is None
    assert welch_interval([0.9, 0.9], [0.5, 0.5]) == pytest.approx((0.4, 0.4))


# --- question 7 -----------------------------------------------------------------------------------

NEITHER = "neither (cv between the thresholds, or mixed over seeds or layers)"


def layer_mech(cv, entropy, depth=3):
    return {EPOCHS: {f"conv{i}": {"coefficient_cv_images": cv[i - 1], "coefficient_entropy": entropy[i - 1]}
                     for i in range(1, depth + 1)}}


@pytest.mark.parametrize("per_seed, answer", [
    ([([0.06, 0.06, 0.0], [0.5] * 3)] * 3, "depends on the input"),
    ([([0.06, 0.06, 0.0], [0.5] * 3)] * 2 + [([0.06, 0.0, 0.0], [0.5] * 3)], NEITHER),  # one seed disagrees
    ([([0.03, 0.03, 0.03], [0.5] * 3)] * 3, NEITHER),  # between the thresholds
    ([([0.005, 0.005, 0.2], [0.995, 0.995, 0.5])] * 3, "input-independent; near-uniform"),
    ([([0.005, 0.005, 0.2], [0.995, 0.98, 0.5])] * 3, "input-independent"),
])
def test_question7_input_dependence(tmp_path, per_seed, answer):
    for seed, (cv, ent) in enumerate(per_seed):
        write_long_run(tmp_path, depth=3, seed=seed, mech=layer_mech(cv, ent))
    assert pick(answers(tmp_path)["q7"], depth=3)["answer"] == answer


# --- arms, plan, missing runs, relative death ------------------------------------------------------

def test_arm_names():
    assert arm_of({"routing_options": {}}) == DEFAULT_ARM
    assert arm_of({"routing_options": {"coefficients": "routed"}}) == DEFAULT_ARM
    assert arm_of({"routing_options": {"coefficients": "uniform"}}) == CONTROL_ARM
    assert arm_of({"routing_options": {}, "pose_norm": False}) == "pose_norm=False"
    assert arm_of({"routing_options": {"final_lambda": 1e-3, "lambda_schedule": "fixed"}}) == \
        "final_lambda=0.001, lambda_schedule=fixed"


def test_full_scale_command_of_an_arm_uses_its_preset(tmp_path):
    from capsbench.report.questions import _presets, full_scale_command

    plan = plan_runs([REPO / "specs/long/screening.yaml"])
    command = full_scale_command("em", "renormalise=True", 6, _presets(plan))
    preset = "sweep.extends=[long/arms/em_yl1993_renormalise.yaml]"
    assert command == (f"capsbench run specs/self_depth_sweep.yaml '{preset}' "
                       "'sweep.data.name=[mnist]' 'sweep.model.depth=[6]'")
    assert main(["validate", str(REPO / "specs/self_depth_sweep.yaml"), preset, "sweep.data.name=[mnist]",
                 "sweep.model.depth=[6]"]) == 0


def test_plan_of_the_shipped_specs_names_every_arm():
    plan = plan_runs([REPO / "specs/long" / n for n in ("screening.yaml", "confirmation.yaml",
                                                           "confirmation_arms.yaml")])
    arms = {(p["routing"], p["arm"]) for p in plan.values()}
    # 28 + 60 + 30 (24 controls and one variant found to change an answer), less the seed-0 runs the screening shares
    # with the confirmation
    assert len(plan) == 98
    assert len(arms) == 14 and ("em", "renormalise=True") in arms and ("uniform", DEFAULT_ARM) in arms


def test_missing_runs_and_their_commands(tmp_path):
    write_long_run(tmp_path, depth=1, seed=0, name="self-depth1-seed0-aaaa")
    write_long_run(tmp_path, depth=1, seed=1, epochs_done=2, name="self-depth1-seed1-aaaa")
    plan = {f"self-depth1-seed{s}-aaaa": {"routing": "self", "arm": DEFAULT_ARM, "depth": 1, "seed": s,
                                          "spec": "specs/long/confirmation.yaml",
                                          "preset": "../protocols/methods/self.yaml"} for s in (0, 1, 2)}
    a = answers(tmp_path, plan)
    states = {m["run"]: m["state"] for m in a["missing"]["missing"]}
    assert states == {"self-depth1-seed1-aaaa": f"unfinished: running or interrupted (epoch 2 of {EPOCHS})",
                      "self-depth1-seed2-aaaa": "not started"}
    write_long_run(tmp_path, depth=1, seed=2, name="pilot-depth1-seed2")  # not planned: excluded, not a seed
    a = answers(tmp_path, plan)
    assert pick(a["runs"], run="pilot-depth1-seed2")["status"] == "excluded: not a planned run (ok)"
    assert pick(a["q1"], depth=1)["seeds"] == [0]
    assert a["commands"] == ["OMP_NUM_THREADS=1 capsbench run specs/long/confirmation.yaml "
                             "'sweep.extends=[../protocols/methods/self.yaml]' 'sweep.model.depth=[1]' --jobs 2"]


def test_relative_death_is_reported_not_decisive(tmp_path):
    # layer mean at E: (0.04 + 3 * 0.3) / 4 = 0.235; 0.16 x 0.235 = 0.0376 -> 0.03 relatively dead, 0.04 not
    write_long_run(tmp_path, depth=1, acts={"conv1": layer_series([0.3, 0.3, 0.3, 0.03])})
    write_long_run(tmp_path, depth=1, seed=1, acts={"conv1": layer_series([0.3, 0.3, 0.3, 0.04])})
    a = answers(tmp_path)
    assert pick(a["relative_death"], depth=1)["relative_dead_last"] == [1, 0]
    assert pick(a["q1"], depth=1)["dying"] == [0, 0]


def test_baselines_in_the_sweep_folder_are_listed_never_asked(tmp_path):
    for seed in range(3):
        write_long_run(tmp_path, depth=3, seed=seed)
        write_long_run(tmp_path, depth=3, seed=seed, arch="timm_resnet", name=f"timm_resnet-depth3-seed{seed}")
    a = answers(tmp_path)
    assert pick(a["q1"], depth=3)["seeds"] == [0, 1, 2]  # the capsule runs only
    baselines = [r for r in a["runs"] if r["run"].startswith("timm_resnet")]
    assert len(baselines) == 3 and all(r["status"] == "not a capsule network (timm_resnet, ok)" for r in baselines)


def grads(bottom: float, top: float) -> dict:
    return {"conv1": {"input": bottom, "weight": 1.0}, "class": {"input": top, "weight": 1.0}}


def test_gradient_flow_is_a_geometric_mean_over_seeds(tmp_path):
    # last epoch: rho = 10, 100, 1000 -> geometric mean 100; epoch 1: 1 in every seed
    for seed, rho in enumerate((10.0, 100.0, 1000.0)):
        write_long_run(tmp_path, depth=3, seed=seed, grads={1: grads(2.0, 2.0), EPOCHS: grads(rho * 0.5, 0.5)})
    # depth 4: no gradient reaches the class capsules (a constant output) in two seeds, underflow to 0 in one
    write_long_run(tmp_path, depth=4, seed=0, grads={EPOCHS: grads(0.0, 0.0)})
    write_long_run(tmp_path, depth=4, seed=1, grads={EPOCHS: grads(0.0, 0.0)})
    write_long_run(tmp_path, depth=4, seed=2, grads={EPOCHS: grads(0.0, 1.0)})
    flow = answers(tmp_path)["gradient_flow"]
    d3 = pick(flow, depth=3)
    assert d3["last"]["per_seed"] == pytest.approx([10.0, 100.0, 1000.0])
    assert d3["last"]["geometric_mean"] == pytest.approx(100.0)
    lo, hi = d3["last"]["ci95"]
    assert lo < 10.0 and hi > 1000.0 and lo * hi == pytest.approx(100.0 ** 2)  # symmetric in log10
    assert d3["first"]["geometric_mean"] == pytest.approx(1.0) and d3["first"]["ci95"] == pytest.approx([1.0, 1.0])
    d4 = pick(flow, depth=4)
    assert d4["last"]["per_seed"] == [None, None, 0.0] and d4["last"]["no_gradient_at_class_input"] == 2
    assert d4["last"]["geometric_mean"] == 0.0 and d4["last"]["ci95"] is None
    assert d4["first"]["per_seed"] == [None] * 3 and d4["first"]["geometric_mean"] is None  # no norms at all


# --- the command ----------------------------------------------------------------------------------

def test_cli_writes_markdown_json_and_figures(tmp_path, capsys):
    runs = tmp_path / "runs"
    for routing in ("self", "uniform"):
        for depth in (1, 6):
            write_long_run(runs, routing=routing, depth=depth, seed=0)
    write_long_run(runs, routing="self", depth=6, seed=0, options={"coefficients": "uniform"})
    planned = tmp_path / "planned"
    assert main(["report", str(runs), "--questions", "long-cpu", "--out", str(planned),
                 "--plan", str(REPO / "specs/long/confirmation_arms.yaml")]) == 0
    data = json.loads((planned / "questions.json").read_text())
    assert data["missing"]["planned"] == 30 and data["missing"]["finished"] == 0  # other spec hashes than these
    assert all(r["status"] == "excluded: not a planned run (ok)" for r in data["runs"]) and data["q1"] == []
    out = tmp_path / "answers"
    assert main(["report", str(runs), "--questions", "long-cpu", "--out", str(out), "--plan", "none"]) == 0
    assert json.loads((out / "questions.json").read_text())["missing"] is None
    md = (out / "questions.md").read_text()
    for heading in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## 7.", "## 8."):
        assert heading in md
    assert (out / "questions/self-depth.png").stat().st_size > 0
    assert not (out / "questions/uniform-depth.png").exists()  # drawn in every method's figure instead
    assert (out / "questions/runs/self-depth6-seed0/activations.png").exists()
    assert (out / "questions/runs/self-depth6-seed0/mechanism.png").exists()
    assert not (out / "questions/runs/self-depth1-seed0").exists()  # question 8: depths 6 and 10 only


@pytest.mark.parametrize("argv, message", [
    (["--questions", "paper"], "--questions: expected one of long-cpu, remedies, got 'paper'"),
    (["--questions", "long-cpu", "--plan", "nope.yaml"], "--plan: nope.yaml is not a spec file"),
    (["--plan", "x.yaml"], "--plan: only with --questions"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, argv, message):
    write_long_run(tmp_path, depth=1)
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("protocol, version", [("test", "1"), ("long-cpu", "2")])
def test_cli_without_long_runs_is_bad_input(tmp_path, capsys, protocol, version):
    from capsbench.results.testing import write_fake_run

    write_fake_run(tmp_path / "r", protocol=protocol, protocol_version=version)
    assert main(["report", str(tmp_path), "--questions", "long-cpu", "--out", str(tmp_path / "o")]) == 2
    assert "no long-cpu v1 runs found" in capsys.readouterr().err


def test_depth_figure_data_method_control_and_floor(tmp_path):
    from capsbench.report.questions_write import method_depth_data

    for seed in (0, 1, 2):
        write_long_run(tmp_path, routing="em", depth=2, seed=seed, accuracy=0.5 + 0.1 * seed,
                       acts={"conv1": layer_series(*[dying_series(2)] * seed)})
        write_long_run(tmp_path, routing="em", depth=2, seed=seed, options={"coefficients": "uniform"})
    write_long_run(tmp_path, routing="uniform", depth=2, seed=0)
    data = method_depth_data(answers(tmp_path)["runs"], "em", 10, TYPES, 0.01)
    method, control, floor = data["lines"]
    assert (method["name"], control["name"], floor["name"]) == ("em", "em, uniform coefficients",
                                                                 "uniform routing (floor)")
    assert method["dead"] == [pytest.approx(0.5)]  # dying 0, 1, 2 over 2 stacked layers: 0.5 per layer
    assert method["accuracy"] == [pytest.approx(0.6)] and method["accuracy_ci95"][0] is not None
    assert floor["seeds"] == [1] and floor["accuracy_ci95"] == [None]  # one seed: no interval


def test_remedy_runs_in_the_sweep_folder_are_listed_never_asked(tmp_path):
    for seed in range(3):
        write_long_run(tmp_path, routing="self", depth=6, seed=seed, accuracy=0.9)
        # the remedies sweep shares the folder: a residual self run at the same depth must not join self's seeds
        write_long_run(tmp_path, routing="self", depth=6, seed=seed, accuracy=0.1, name=f"self-res-{seed}",
                       extra={"model.residual": True})
    write_long_run(tmp_path, routing="self", depth=6, seed=0, name="self-ln", pose_norm=True,
                   extra={"model.pose_norm_kind": "layer"})
    out = answers(tmp_path)
    assert pick(out["q1"], routing="self", depth=6)["seeds"] == [0, 1, 2]
    assert pick(out["gradient_flow"], routing="self", depth=6)["seeds"] == [0, 1, 2]
    statuses = {r["run"]: r["status"] for r in out["runs"]}
    assert statuses["self-res-0"] == "a remedy run (res, ok)"
    assert statuses["self-ln"] == "a remedy run (pose-norm+norm=layer, ok)"
    assert out["q5"] == []  # no arm of the long protocol among them
