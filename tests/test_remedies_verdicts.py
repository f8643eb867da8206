"""The remedies verdicts (capsbench/report/remedies_verdicts.py): docs/remedies.md's rules S, A, B and C on
synthetic run records with known answers, each next to a case that flips it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from capsbench.cli import main
from capsbench.report.questions import plan_runs
from capsbench.report.remedies_verdicts import (
    AMENDMENT_3,
    COLLAPSE,
    CURES,
    DEAD,
    HIDES,
    NO_HELP,
    NO_SYMPTOM,
    UNSTABLE,
    collect,
    default_plan,
    judge,
    reference_accuracy,
    remedy_verdicts,
    survival,
)
from capsbench.report.remedies_write import remedies_markdown
from capsbench.results.run_record import seal, write_record
from capsbench.results.testing import fake_run_record

REPO = Path(__file__).resolve().parent.parent
TYPES = 4
REMEDIES = {"res": {"model.residual": True}, "ln": {"model.pose_norm": True, "model.pose_norm_kind": "layer"},
            "nopn": {"model.pose_norm": False}, "none": {}}


def write_run(root: Path, *, remedy: str = "none", routing: str = "dynamic", depth: int = 10, seed: int = 0,
              accuracy: float = 0.9, dead_types: int = 0, rho: float | None = 1.0, status: str = "ok",
              entropy: float | list[float] = 0.5, options: dict | None = None) -> Path:
    """A finished long-cpu run: ``dead_types`` of TYPES dead in every stacked layer; ``rho`` the ratio of the
    gradient norms at conv1's and the class capsules' input (None: no norms; 0.0 as top: no gradient at all)."""
    extra = {**REMEDIES[remedy], "model.routing_options": dict(options or {})}
    record = fake_run_record(routing=routing, depth=depth, seed=seed, accuracy=accuracy, types=TYPES,
                             dead=[dead_types] * depth, protocol="long-cpu", status=status, extra_config=extra)
    norms = record["metrics"]["grad_norms"]
    if rho == "no gradient":
        norms["conv1"]["input"], norms["class"]["input"] = 0.0, 0.0
    elif rho is not None:
        norms["conv1"]["input"], norms["class"]["input"] = rho * 0.5, 0.5
    entropies = entropy if isinstance(entropy, list) else [entropy] * depth
    record["metrics"]["mechanism"] = {
        f"conv{i}": {"coefficient_entropy": entropies[i - 1], "activation_percentiles": {"p5": 0.1, "p50": 0.3},
                     "dead_unit_fraction": 0.0, "pose_norm": None, "coefficient_cv_images": 0.1, "terms": None}
        for i in range(1, depth + 1)}
    tag = "-".join(f"{k}{v}" for k, v in sorted((options or {}).items()))
    path = root / f"{routing}_{remedy}{tag}-depth{depth}-seed{seed}"
    write_record(path / "record.json", seal(record))
    return path


def plain_reference(root: Path, accuracy: float = 0.95, routing: str = "dynamic") -> None:
    """The plain preset at depths 1-6 (A_ref = ``accuracy``, at depth 1), three seeds."""
    for depth, acc in ((1, accuracy), (3, accuracy - 0.01), (6, accuracy - 0.3)):
        for seed in range(3):
            write_run(root, routing=routing, depth=depth, seed=seed, accuracy=acc)


def verdict_of(root: Path, name: str = "res", depth: int = 10, routing: str = "dynamic") -> dict:
    return judge(collect([root], log=lambda line: None), routing, name, depth)


def half_dead_plain(root: Path, depth: int = 10, seeds=range(3)) -> None:
    for seed in seeds:
        write_run(root, depth=depth, seed=seed, accuracy=0.1, dead_types=3, rho="no gradient")


# --- A: is the symptom gone? -----------------------------------------------------------------------

@pytest.mark.parametrize("plain_dead, plain_acc, arm_dead, arm_acc, expected, symptom", [
    (3, 0.1, 1, 0.9, "gone", DEAD),        # plain 0.75, arm 0.25
    (3, 0.1, 2, 0.9, "not gone", DEAD),    # arm 0.5: not below 0.5
    (2, 0.9, 0, 0.9, "gone", DEAD),        # plain exactly 0.5 counts as half-dead, whatever its accuracy
    (1, 0.9, 0, 0.9, NO_SYMPTOM, None),    # plain 0.25 and accurate: nothing to cure
    # amendment 2: alive but collapsed (EM at depth 10 in the long protocol): the symptom is the collapse
    (0, 0.12, 0, 0.9, "gone", COLLAPSE),
    (0, 0.12, 0, 0.15, "not gone", COLLAPSE),  # exactly chance + 5 points is still collapsed
    (1, 0.151, 0, 0.9, NO_SYMPTOM, None),  # just above the collapse line: no symptom
])
def test_criterion_a(tmp_path, plain_dead, plain_acc, arm_dead, arm_acc, expected, symptom):
    plain_reference(tmp_path)
    for seed in range(3):
        write_run(tmp_path, depth=10, seed=seed, accuracy=plain_acc, dead_types=plain_dead)
        write_run(tmp_path, remedy="res", seed=seed, dead_types=arm_dead, accuracy=arm_acc)
    v = verdict_of(tmp_path)
    assert (v["A"], v["symptom"]) == (expected, symptom)


def test_criterion_a_without_the_plain_preset_is_undecided(tmp_path):
    plain_reference(tmp_path)
    write_run(tmp_path, remedy="res", depth=20)
    v = verdict_of(tmp_path, depth=20)
    assert v["A"].startswith("undecided") and v["verdict"] == v["A"] and v["provisional"]


# --- B: is accuracy restored? ----------------------------------------------------------------------

@pytest.mark.parametrize("accuracies, expected", [
    ((0.90, 0.90, 0.90), "restored"),      # exactly A_ref - 5 points (0.95 - 0.05)
    ((0.89, 0.89, 0.89), "not restored"),  # interval collapses to 0.89 < 0.90
    ((0.80, 0.85, 0.88), "restored"),      # mean 0.843, but the upper end of the 95% interval (0.94) reaches 0.90
])
def test_criterion_b_uses_the_upper_end_of_the_interval(tmp_path, accuracies, expected):
    plain_reference(tmp_path, accuracy=0.95)
    half_dead_plain(tmp_path)
    for seed, acc in enumerate(accuracies):
        write_run(tmp_path, remedy="res", seed=seed, accuracy=acc)
    v = verdict_of(tmp_path)
    assert v["a_ref"] == pytest.approx(0.95) and v["a_ref_depth"] == 1
    assert v["B"] == expected


def test_reference_is_the_best_mean_over_depths_up_to_10(tmp_path):
    plain_reference(tmp_path, accuracy=0.9)
    for seed in range(3):  # deeper than 10: never the reference, however good
        write_run(tmp_path, depth=20, seed=seed, accuracy=0.99)
        write_run(tmp_path, depth=3, seed=seed, accuracy=0.92, options={"coefficients": "uniform"})  # a control
    rows = collect([tmp_path], log=lambda line: None)
    assert reference_accuracy(rows, "dynamic") == (None, None)  # no depth 10: not the long confirmation's grid
    for seed in range(3):
        write_run(tmp_path, depth=10, seed=seed, accuracy=0.5)
    assert reference_accuracy(collect([tmp_path], log=lambda line: None), "dynamic") == (pytest.approx(0.9), 1)


def test_a_routing_the_long_protocol_never_confirmed_has_no_reference(tmp_path):
    # a contributed routing: only its plain depth-10 run, at chance; B must not call chance "restored"
    for seed in range(3):
        write_run(tmp_path, routing="ida", depth=10, seed=seed, accuracy=0.1, dead_types=3)
        write_run(tmp_path, routing="ida", remedy="res", depth=10, seed=seed, accuracy=0.12, rho=1.0)
    v = verdict_of(tmp_path, routing="ida")
    assert v["a_ref"] is None and v["B"].startswith("undecided") and v["verdict"] == "undecided on B"
    text = remedies_markdown(remedy_verdicts([tmp_path], log=lambda line: None), {})
    assert "vs A_ref n/a: undecided (no A_ref" in text and "dNone" not in text


# --- C: does the gradient reach the early layers? ---------------------------------------------------

@pytest.mark.parametrize("rhos, statuses, expected", [
    ((1.0, 50.0, 0.02), ("ok",) * 3, "reaches"),
    ((0.001, 0.005, 1.0), ("ok",) * 3, "vanished"),
    ((200.0, 1e4, 1.0), ("ok",) * 3, "exploding"),
    ((200.0, 1.0, 0.001), ("ok",) * 3, "fails (seeds disagree)"),  # one each way, one in range: C fails
    ((None, None, None), ("ok",) * 3, "undecided (no gradient norms)"),
    ((1.0, 1.0, 1.0), ("ok", "diverged", "diverged"), "exploding"),  # divergence counts as exploding
    (("no gradient", "no gradient", 1.0), ("ok",) * 3, "vanished"),  # a constant output gets no gradient at all
])
def test_criterion_c_two_of_three_seeds(tmp_path, rhos, statuses, expected):
    plain_reference(tmp_path)
    half_dead_plain(tmp_path)
    for seed, (rho, status) in enumerate(zip(rhos, statuses)):
        write_run(tmp_path, remedy="res", seed=seed, rho=rho, status=status)
    v = verdict_of(tmp_path)
    assert v["C"] == expected
    assert v["diverged"] == [s for s, st in enumerate(statuses) if st == "diverged"]


# --- the verdict --------------------------------------------------------------------------------------

@pytest.mark.parametrize("arm_dead, accuracy, rho, entropy, verdict, flag", [
    (0, 0.93, 1.0, 0.5, CURES, False),
    (0, 0.93, 1.0, 0.995, CURES, True),     # alive through uniform coupling: flagged, still cured
    (0, 0.50, 1.0, 0.5, HIDES, False),      # alive, accuracy not restored
    (0, 0.93, 0.001, 0.5, HIDES, False),    # alive, early layers cut off
    (0, 0.93, 500.0, 0.5, UNSTABLE, False),
    (0, 0.50, 500.0, 0.5, UNSTABLE, False),  # exploding outranks "not restored"
    (0, 0.93, [200.0, 1.0, 0.001], 0.5, HIDES, False),  # C fails on disagreeing seeds: hides, never undecided
    (0, 0.93, 1.0, [0.995] * 9 + [0.5], CURES, False),  # one stacked layer still routes: not flagged
    (3, 0.93, 1.0, 0.5, NO_HELP, False),
])
def test_verdicts(tmp_path, arm_dead, accuracy, rho, entropy, verdict, flag):
    plain_reference(tmp_path, accuracy=0.95)
    half_dead_plain(tmp_path)
    for seed in range(3):
        write_run(tmp_path, remedy="res", seed=seed, dead_types=arm_dead, accuracy=accuracy, entropy=entropy,
                  rho=rho[seed] if isinstance(rho, list) else rho)
    v = verdict_of(tmp_path)
    assert (v["verdict"], v["alive_not_routing"], v["provisional"]) == (verdict, flag, False)


def test_one_seed_is_provisional(tmp_path):
    plain_reference(tmp_path)
    half_dead_plain(tmp_path, seeds=[0])
    write_run(tmp_path, remedy="res", seed=0, accuracy=0.93)
    v = verdict_of(tmp_path)
    assert v["verdict"] == CURES and v["provisional"] and v["accuracy_ci95"] is None


def test_no_symptom_rests_on_the_plain_preset_alone(tmp_path):
    """Amendment 5: with the plain preset alive on three seeds, one seed of the arm gives a final 'no symptom'."""
    for seed in range(3):
        write_run(tmp_path, depth=30, seed=seed, accuracy=0.9)
    write_run(tmp_path, remedy="res", depth=30, seed=0, accuracy=0.2, rho=1e-6)  # whatever the arm does
    v = verdict_of(tmp_path, depth=30)
    assert v["verdict"] == NO_SYMPTOM and not v["provisional"]
    shutil.rmtree(tmp_path / "dynamic_none-depth30-seed2")  # two seeds of the plain preset: still provisional
    assert verdict_of(tmp_path, depth=30)["provisional"]


@pytest.mark.parametrize("accuracy, rho, status, costs", [
    (0.86, 1.0, "ok", []),                                   # 4 points below plain's 0.9: within B's margin
    (0.849, 1.0, "ok", ["accuracy -5.1 points"]),            # just past it
    (0.9, 1e3, "ok", ["gradient exploding (plain: reaches)"]),
    (0.9, 1e-3, "ok", ["gradient vanished (plain: reaches)"]),
    (0.9, 50.0, "ok", []),                                   # inside C's band
    (0.9, 1.0, "diverged", ["gradient exploding (plain: reaches)", "1 seed(s) diverged (plain: none)"]),
])
def test_cost_where_there_is_no_symptom_is_reported(tmp_path, accuracy, rho, status, costs):
    """'No symptom at this depth' whatever the arm does; what the arm costs there is listed beside it, never
    deciding (VB's pre and bn at depth 30: no symptom, 47.9% and 10.0% against plain VB's 90.5%)."""
    for seed in range(3):
        write_run(tmp_path, depth=30, seed=seed, accuracy=0.9)
    write_run(tmp_path, remedy="res", depth=30, accuracy=accuracy, rho=rho, status=status)
    v = verdict_of(tmp_path, depth=30)
    assert v["verdict"] == NO_SYMPTOM and v["cost_without_symptom"] == costs
    text = remedies_markdown(remedy_verdicts([tmp_path], log=lambda line: None), {})
    assert ("No arm costs anything measurable" in text) == (not costs)


def test_cost_is_only_for_no_symptom(tmp_path):
    """Where there is a symptom, B and C already judge the arm: no separate cost."""
    plain_reference(tmp_path)
    half_dead_plain(tmp_path)
    write_run(tmp_path, remedy="res", accuracy=0.2, rho=1e3)
    assert verdict_of(tmp_path)["cost_without_symptom"] is None


def test_a_plain_preset_whose_every_seed_diverged_leaves_a_undecided_and_says_why(tmp_path):
    """Plain ida at depth 30 diverged in epoch 1 on all three seeds: no dead fraction or accuracy to compare with, so
    A is undecided for good (not provisional: the seeds were run), and the reason names the diverged seeds."""
    plain_reference(tmp_path)
    for seed in range(3):
        write_run(tmp_path, depth=30, seed=seed, status="diverged")
        write_run(tmp_path, remedy="res", depth=30, seed=seed, accuracy=0.3)
    v = verdict_of(tmp_path, depth=30)
    assert v["A"] == "undecided (the plain preset has no finished run at depth 30; 3 diverged)"
    assert v["verdict"] == v["A"] and not v["provisional"]
    for seed in range(3):
        shutil.rmtree(tmp_path / f"dynamic_none-depth30-seed{seed}")
    v = verdict_of(tmp_path, depth=30)
    assert v["A"] == "undecided (the plain preset has no finished run at depth 30)" and v["provisional"]


# --- rule S and the whole pass --------------------------------------------------------------------

@pytest.mark.parametrize("accuracy, dead_types, survives, confirmed_by", [
    (0.151, 0, True, "rule S"), (0.15, 0, False, ""),  # chance (0.1) + 5 points collapses, as the leaderboard's rule
    (0.9, 1, True, "rule S"),
    (0.9, 2, False, AMENDMENT_3),  # dead fraction 0.5 is half-dead; accurate all the same: amendment 3 confirms it
    (0.15, 2, False, ""),          # half-dead and collapsed: nothing to confirm
])
def test_rule_s_at_depth_20(tmp_path, accuracy, dead_types, survives, confirmed_by):
    write_run(tmp_path, remedy="ln", depth=20, accuracy=accuracy, dead_types=dead_types)
    write_run(tmp_path, remedy="ln", depth=20, seed=1, accuracy=0.1, dead_types=4)  # not the screening seed
    (entry,) = survival(collect([tmp_path], log=lambda line: None))
    assert entry["survives"] is survives and bool(entry["reason"]) != survives
    assert entry["confirmed_by"] == confirmed_by
    assert entry["name"] == "pose-norm+norm=layer"


def test_the_confirmation_list_holds_survivors_and_accurate_half_dead_arms(tmp_path):
    write_run(tmp_path, depth=20, accuracy=0.1, dead_types=4)              # the plain preset: reference only
    write_run(tmp_path, remedy="ln", depth=20, accuracy=0.9)               # survives
    write_run(tmp_path, remedy="res", depth=20, accuracy=0.95, dead_types=3)  # accurate, half-dead
    text = remedies_markdown(remedy_verdicts([tmp_path], log=lambda line: None), {})
    assert ("To confirm: dynamic · pose-norm+norm=layer (rule S), dynamic · res (amendment 3: accurate, half-dead)."
            in text)


def test_controls_and_variants_are_not_remedies_and_options_name_an_arm(tmp_path):
    plain_reference(tmp_path)
    half_dead_plain(tmp_path)
    write_run(tmp_path, seed=0, options={"coefficients": "uniform"})      # the long protocol's control
    write_run(tmp_path, remedy="nopn", seed=0)  # EM without its pose BatchNorm: a variant, not a remedy
    write_run(tmp_path, remedy="res", seed=0, options={"detach_agreement": True})
    names = {v["name"] for v in remedy_verdicts([tmp_path], log=lambda line: None)["verdicts"]}
    assert names == {"res · detach_agreement=True"}


def test_plan_excludes_unplanned_remedy_runs_and_lists_missing_ones(tmp_path):
    plain_reference(tmp_path)
    half_dead_plain(tmp_path)
    planned = write_run(tmp_path, remedy="res", seed=0)
    write_run(tmp_path, remedy="ln", seed=0)  # a pilot nobody planned
    plan = {planned.name: {"routing": "dynamic", "arm": "x", "depth": 10, "seed": 0, "spec": "s", "preset": "a.yaml"},
            "dynamic_res-depth20-seed0": {"routing": "dynamic", "arm": "x", "depth": 20, "seed": 0, "spec": "s",
                                          "preset": "a.yaml"}}
    out = remedy_verdicts([tmp_path], plan=plan, log=lambda line: None)
    assert {v["name"] for v in out["verdicts"]} == {"res"}
    assert [m["run"] for m in out["missing"]["missing"]] == ["dynamic_res-depth20-seed0"]


def test_markdown_keeps_diverged_runs_apart_from_the_runs_still_to_run(tmp_path):
    # a diverged run is a result the rules count and the runner never re-runs: the headline must not call it missing
    plain_reference(tmp_path)
    half_dead_plain(tmp_path)
    ok = write_run(tmp_path, remedy="res", seed=0)
    gone = write_run(tmp_path, remedy="res", seed=1, status="diverged")
    info = {"routing": "dynamic", "arm": "x", "depth": 10, "spec": "s", "preset": "a.yaml"}
    plan = {ok.name: {**info, "seed": 0}, gone.name: {**info, "seed": 1},
            "dynamic_res-depth10-seed2": {**info, "seed": 2}}
    text = remedies_markdown(remedy_verdicts([tmp_path], plan=plan, log=lambda line: None), {})
    assert "finished (ok): 1; diverged (a result, counted by the rules): 1; still to run: 1." in text
    still = text.split("runs still to run")[1].split("</details>")[0]
    assert "dynamic_res-depth10-seed2" in still and gone.name not in still
    assert gone.name in text.split("diverged runs")[1]


def test_shipped_plan_names_the_remedies_screening_and_confirmation():
    plan = plan_runs(default_plan())
    # screening 34 arms x 2 depths; confirmation 11 arms (5 plain presets, 6 to confirm) x 3 depths x 3 seeds, whose
    # seed-0 runs at depths 10 and 20 are the screening's; self's and VB's 11 arms at depth 30 on seed 0 (amendment 5);
    # efficient plain and + res at depth 10, seeds 1 and 2 (amendment 6); the contributed plain presets at depths 1,
    # 3, 6 x 3 seeds
    assert len(plan) == 34 * 2 + 11 * 9 - 11 * 2 + 11 + 2 * 2 + 2 * 3 * 3
    assert {p["preset"] for p in plan.values()} >= {"arms/dynamic_init_detach.yaml", "arms/em.yaml"}


def test_cli_writes_markdown_json_and_a_figure(tmp_path, capsys):
    runs = tmp_path / "runs"
    plain_reference(runs)
    half_dead_plain(runs)
    for seed in range(3):
        write_run(runs, remedy="res", seed=seed, accuracy=0.93)
    out = tmp_path / "out"
    assert main(["report", str(runs), "--questions", "remedies", "--plan", "none", "--out", str(out)]) == 0
    assert "wrote 1 figure(s)" in capsys.readouterr().out
    data = json.loads((out / "remedies.json").read_text())
    assert [v["verdict"] for v in data["verdicts"]] == [CURES]
    text = (out / "remedies.md").read_text()
    assert "**cures**" in text and "dynamic-gradient.png" in text
    assert (out / "remedies" / "dynamic-gradient.png").is_file()


@pytest.mark.parametrize("arch, protocol, version", [("timm_resnet", "long-cpu", "1"), ("capsnet", "paper-mini", "1"),
                                                     ("capsnet", "long-cpu", "2")])
def test_cli_without_capsule_runs_of_the_protocol_is_one_line(tmp_path, capsys, arch, protocol, version):
    # a later protocol version has its own pre-registration: its runs never join v1's verdicts
    record = fake_run_record(arch=arch, depth=10, protocol=protocol, protocol_version=version)
    write_record(tmp_path / "runs" / "other" / "record.json", record)
    write_record(tmp_path / "runs" / "other-2" / "record.json", record)
    assert main(["report", str(tmp_path / "runs"), "--questions", "remedies", "--plan", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "no long-cpu v1 capsule runs" in err[-1]
    assert len(err) == 2 and "2 run folder(s) not a long-cpu v1 capsule run, skipped: " in err[0]  # one line


def test_every_seed_diverged_is_undecided_not_cured(tmp_path):
    plain_reference(tmp_path)
    half_dead_plain(tmp_path)
    for seed in range(3):
        write_run(tmp_path, remedy="res", seed=seed, status="diverged")
    v = verdict_of(tmp_path)
    assert v["A"] == "undecided (no finished run; 3 diverged)" and v["verdict"] == v["A"] and v["C"] == "exploding"


def test_every_seed_diverged_where_the_plain_preset_is_alive_is_no_symptom(tmp_path):
    plain_reference(tmp_path)
    for seed in range(3):
        write_run(tmp_path, depth=10, seed=seed)  # plain preset alive at depth 10
        write_run(tmp_path, remedy="res", seed=seed, status="diverged")
    assert verdict_of(tmp_path)["verdict"] == NO_SYMPTOM


def test_a_plain_preset_with_one_seed_makes_the_verdict_provisional(tmp_path):
    plain_reference(tmp_path)
    half_dead_plain(tmp_path, seeds=[0])
    for seed in range(3):
        write_run(tmp_path, remedy="res", seed=seed, accuracy=0.93)
    v = verdict_of(tmp_path)
    assert v["verdict"] == CURES and v["provisional"]


def test_a_diverged_seed_of_the_plain_preset_counts_as_run(tmp_path):
    """A diverged run is never re-run, so the plain preset with two finished seeds and one diverged is complete:
    its verdict is final, with A decided on the two finished seeds."""
    plain_reference(tmp_path)
    half_dead_plain(tmp_path, seeds=[0, 2])
    write_run(tmp_path, seed=1, status="diverged")
    for seed in range(3):
        write_run(tmp_path, remedy="res", seed=seed, accuracy=0.93)
    v = verdict_of(tmp_path)
    assert (v["verdict"], v["provisional"], v["plain_dead_fraction"]) == (CURES, False, 0.75)
    shutil.rmtree(tmp_path / "dynamic_none-depth10-seed1")  # two seeds run: provisional again
    assert verdict_of(tmp_path)["provisional"]


def test_unfinished_screening_run_is_pending_not_failed(tmp_path):
    path = write_run(tmp_path, remedy="ln", depth=20)
    (path / "record.json").rename(path / "metrics.jsonl")  # a run folder without its record: still running
    (path / "metrics.jsonl").write_text("")
    record = fake_run_record(depth=20, protocol="long-cpu", extra_config=REMEDIES["ln"])
    (path / "config.yaml").write_text(yaml.safe_dump(record["config"]))
    (entry,) = survival(collect([tmp_path], log=lambda line: None))
    assert entry["survives"] is None and entry["reason"].startswith("pending")
    text = remedies_markdown(remedy_verdicts([tmp_path], log=lambda line: None), {})
    assert "**pending**" in text and "To confirm" not in text


# --- leaderboard records standing in for run folders that were not kept -------------------------------

def _to_records(runs: Path, records: Path, names: list[str]) -> None:
    """Commit the runs ``names`` of ``runs`` as leaderboard records (as `capsbench leaderboard add` would)."""
    from capsbench.results.entry import to_entry
    from capsbench.results.run_record import read_run_record

    for name in names:
        entry = to_entry(read_run_record(runs / name / "record.json"))
        entry["run_id"] = name  # the fake records name their run after depth and seed only; the folder is the id
        target = records / entry["method"] / f"{name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(entry))


def test_records_stand_in_for_lost_folders_with_the_same_verdict(tmp_path):
    runs, records = tmp_path / "runs", tmp_path / "records"
    plain_reference(runs)
    half_dead_plain(runs)
    for seed in range(3):
        write_run(runs, remedy="res", seed=seed, accuracy=0.93, rho=2.0)
    whole = verdict_of(runs)
    assert whole["verdict"] == CURES
    lost = ["dynamic_none-depth10-seed1", "dynamic_res-depth10-seed0", "dynamic_res-depth10-seed2"]
    _to_records(runs, records, lost)
    for name in lost:
        shutil.rmtree(runs / name)
    partial = verdict_of(runs)  # without them: two seeds of the plain preset, one of the arm
    assert partial["provisional"] and partial["seeds"] == [1]
    rows = collect([runs], log=lambda line: None, records=records)
    by_run = {r["run"]: r for r in rows}
    assert {n for n, r in by_run.items() if r["source"] == "record"} == set(lost)
    rebuilt = judge(rows, "dynamic", "res", 10)
    # what the rules read is in the record; the mechanism terms (reported only) are not
    assert rebuilt["verdict"] == CURES and not rebuilt["provisional"] and rebuilt["accuracy"] == whole["accuracy"]
    assert rebuilt["rho"] == whole["rho"] and rebuilt["A"] == whole["A"]
    assert by_run["dynamic_res-depth10-seed0"]["deepest_entropy"] is None
    assert by_run["dynamic_res-depth10-seed1"]["deepest_entropy"] == 0.5


def test_a_finished_folder_wins_over_its_record_and_a_record_finishes_an_unfinished_folder(tmp_path):
    runs, records = tmp_path / "runs", tmp_path / "records"
    kept = write_run(runs, remedy="res", seed=0, accuracy=0.93)
    stale = write_run(runs, remedy="res", seed=1, accuracy=0.91)
    _to_records(runs, records, [kept.name, stale.name])
    entry_path = next(records.rglob(f"{kept.name}.json"))
    entry = json.loads(entry_path.read_text())
    entry["metrics"]["test_accuracy"] = 0.5  # a record that disagrees with the folder: the folder is what ran here
    entry_path.write_text(json.dumps(entry))
    (stale / "record.json").rename(stale / "metrics.jsonl")  # the folder of an interrupted re-run
    (stale / "metrics.jsonl").write_text("")
    (stale / "config.yaml").write_text(yaml.safe_dump(fake_run_record(protocol="long-cpu")["config"]))
    by_run = {r["run"]: r for r in collect([runs], log=lambda line: None, records=records)}
    assert by_run[kept.name]["test_accuracy"] == 0.93 and by_run[kept.name]["source"] == "folder"
    assert by_run[stale.name]["status"] == "ok" and by_run[stale.name]["source"] == "record"
    assert by_run[stale.name]["test_accuracy"] == 0.91


def test_cli_marks_record_rows_and_rejects_records_elsewhere(tmp_path, capsys):
    runs, records = tmp_path / "runs", tmp_path / "records"
    plain_reference(runs)
    lost = write_run(runs, remedy="res", seed=0, accuracy=0.93)
    _to_records(runs, records, [lost.name])
    shutil.rmtree(lost)
    out = tmp_path / "out"
    assert main(["report", str(runs), "--questions", "remedies", "--plan", "none", "--records", str(records),
                 "--out", str(out)]) == 0
    text = (out / "remedies.md").read_text()
    assert "1 of them read from their leaderboard records (`--records`" in text and lost.name in text
    assert f"| {lost.name} | dynamic | res | 10 | 0 | ok | 93.0% |" in text and "| record |" in text
    capsys.readouterr()
    assert main(["report", str(runs), "--records", str(records)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --records: only with --questions")
    assert main(["report", str(runs), "--questions", "long-cpu", "--plan", "none", "--records", str(records)]) == 2
    assert "--records: only with --questions remedies" in capsys.readouterr().err
    assert main(["report", str(runs), "--questions", "remedies", "--plan", "none",
                 "--records", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder of leaderboard records" in capsys.readouterr().err


def test_b_on_the_mean_is_reported_beside_the_registered_verdict_and_never_replaces_it(tmp_path):
    # mean 0.843 < 0.90, upper end 0.94 >= 0.90: the registered B restores (cures), the mean would not (hides)
    plain_reference(tmp_path, accuracy=0.95)
    half_dead_plain(tmp_path)
    for seed, acc in enumerate((0.80, 0.85, 0.88)):
        write_run(tmp_path, remedy="res", seed=seed, accuracy=acc)
    for seed in range(3):  # an arm whose mean passes: both rules agree, nothing to list
        write_run(tmp_path, remedy="ln", seed=seed, accuracy=0.93)
    v = verdict_of(tmp_path)
    assert (v["B"], v["verdict"]) == ("restored", CURES)
    assert (v["B_mean"], v["verdict_if_B_on_mean"]) == ("not restored", HIDES)
    agree = verdict_of(tmp_path, name="pose-norm+norm=layer")
    assert agree["verdict"] == agree["verdict_if_B_on_mean"] == CURES
    text = remedies_markdown(remedy_verdicts([tmp_path], log=lambda line: None), {})
    section = text.split("### Sensitivity: B on the mean")[1].split("## Which remedy")[0]
    assert "| dynamic | res | 10 | 3 | 84.3% vs 90.0% | cures | hides the symptom |" in section
    assert "pose-norm" not in section
