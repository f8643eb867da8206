"""``capsbench leaderboard verify`` and ``rerecord``: committed records re-run and compared metric by metric."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from capsbench.results import verify
from capsbench.results.entry import to_entry
from capsbench.results.testing import fake_run_record
from tests.conftest import REPO

# The smallest committed ci record: self-routing at depth 0 (a few seconds to re-run).
SMALL = "records/ci/v1/digits/capsnet-self"


def entry(accuracy=0.9, mode="portable", cpu="CPU A", threads=1, torch="2.14.1"):
    e = to_entry(fake_run_record(routing="self", accuracy=accuracy))
    e["environment"].update({"cpu_model": cpu, "torch": torch,
                             "numerics": {"mode": mode, "threads": threads}})
    return e


def test_portable_records_must_be_equal_and_the_line_names_record_metric_and_values():
    old, new = entry(), entry(cpu="CPU B")
    new["metrics"] = copy.deepcopy(new["metrics"])
    new["metrics"]["test_accuracy"] = 0.9 * 1.001
    new["metrics"]["layers"]["conv1"]["types"][3] += 1e-12
    lines, skipped = verify.compare("records/x.json", old, new)
    was, now = old["metrics"]["layers"]["conv1"]["types"][3], new["metrics"]["layers"]["conv1"]["types"][3]
    assert lines == [f"records/x.json: metrics.layers.conv1.types.3: recorded {was!r}, now {now!r}",
                     f"records/x.json: metrics.test_accuracy: recorded 0.9, now {0.9 * 1.001!r}"]
    assert skipped == 0
    assert verify.compare("records/x.json", old, copy.deepcopy(old)) == ([], 0)


def test_native_records_on_another_machine_compare_accuracies_within_the_measured_tolerance():
    old, new = entry(mode="native"), entry(mode="native", cpu="CPU B")
    new["metrics"]["test_accuracy"] = 0.9 + 0.004  # the measured cross-CPU spread: within tolerance
    new["metrics"]["layers"]["conv1"]["types"][3] += 0.01  # not compared across machines
    lines, skipped = verify.compare("r", old, new)
    assert lines == [] and skipped > 0
    new["metrics"]["test_accuracy"] = 0.9 + 0.009
    assert [line.split(" (")[0] for line in verify.compare("r", old, new)[0]] == \
        [f"r: metrics.test_accuracy: recorded 0.9, now {0.9 + 0.009!r}"]
    same = entry(mode="native")  # the same CPU model, threads and torch: must repeat itself exactly
    same["metrics"]["layers"]["conv1"]["types"][3] += 0.01
    assert len(verify.compare("r", old, same)[0]) == 1


def test_sample_is_deterministic_and_of_one_protocol():
    records = {f"records/p/v1/d/m/{i:02d}-s0.json": {"protocol": "p"} for i in range(20)}
    records["records/q/v1/d/m/00-s0.json"] = {"protocol": "q"}
    first = verify.select(records, "p", 5)
    assert first == verify.select(dict(reversed(list(records.items()))), "p", 5) and len(first) == 5
    assert all(rel.startswith("records/p/") for rel in first)
    assert len(verify.select(records, "p", None)) == 20


def test_a_routing_without_ci_records_fails_with_the_command():
    records = {"a": {"protocol": "ci", "baseline": False, "routing": "em"}}
    assert verify.coverage(records, "ci", ["em", "uniform"]) == [
        "routing uniform: no ci records; add it to specs/ci/routings.yaml (model.routing) and run "
        '`capsbench leaderboard rerecord --protocol ci --note "new routing uniform"`']


def test_every_shipped_routing_is_in_the_ci_sweep_and_has_ci_records():
    from capsbench import spec
    from capsbench.registry import ROUTINGS
    from capsbench.results.store import read_records

    # the shipped routings' sweep and any of its own that a plugin routing brings (specs/ci/contrib_routings.yaml)
    runs = [r for path in sorted((REPO / "specs" / "ci").glob("*.yaml")) for r in spec.load(path)]
    swept = {str(r.config.model.routing) for r in runs if r.config.model.arch == "capsnet"}
    assert swept == set(ROUTINGS.names()), "add every routing to a sweep under specs/ci/ (model.routing)"
    assert verify.coverage(read_records(REPO / "leaderboard"), "ci", ROUTINGS.names()) == []


def test_every_committed_record_still_hashes_to_its_spec_hash():
    from capsbench.results.store import read_records

    for rel, e in read_records(REPO / "leaderboard").items():
        assert verify.run_config(e, rel).spec_hash == e["spec_hash"]


# --------------------------------------------------------------------------------------------- end to end


def _one_record_board(tmp_path: Path) -> tuple[Path, str]:
    """A leaderboard root with one committed ci record (self-routing, depth 0, seed 0)."""
    source = sorted(p for p in (REPO / "leaderboard" / SMALL).glob("*-s0.json")
                    if json.loads(p.read_text())["depth"] == 0)
    if not source:
        pytest.fail(f"no depth-0 record under leaderboard/{SMALL}: re-record the ci protocol")
    rel = source[0].relative_to(REPO / "leaderboard").as_posix()
    (tmp_path / rel).parent.mkdir(parents=True)
    shutil.copy(source[0], tmp_path / rel)
    return tmp_path, rel


def _verify(root: Path, rel: str, prelude: str = "") -> subprocess.CompletedProcess:
    """``capsbench leaderboard verify RECORD`` in a fresh process started with portable numerics."""
    code = (f"import sys; {prelude}\nfrom capsbench.cli import main\n"
            f"sys.exit(main(['leaderboard', 'verify', '--root', {str(root)!r}, {str(root / rel)!r}]))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE",
           "CAPSBENCH_MALLOC_TUNING": "0"}
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_verify_passes_on_a_committed_record_and_names_a_tampered_metric(tmp_path):
    root, rel = _one_record_board(tmp_path)
    done = _verify(root, rel)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((root / rel).read_text())
    true_value = record["metrics"]["test_accuracy"]
    record["metrics"]["test_accuracy"] = 0.5
    (root / rel).write_text(json.dumps(record))
    done = _verify(root, rel)
    assert done.returncode == 1
    assert f"{rel}: metrics.test_accuracy: recorded 0.5, now {true_value!r}" in done.stdout.splitlines()


SCALED = """
from capsbench.capsules.routing.base import RoutingOutput
from capsbench.registry import ROUTINGS
original = ROUTINGS.get('self')
class Scaled(original):
    def forward(self, *a, **k):
        out = super().forward(*a, **k)
        return RoutingOutput(out.pose * 1.001, out.activation * 0.999, out.coefficients)
ROUTINGS._entries['self'] = Scaled
"""


def test_a_0_1_percent_change_of_a_routing_fails_verify_naming_its_records(tmp_path):
    """(At depth 0 a self-routed network reads only the class activations: the poses alone would not show.)"""
    root, rel = _one_record_board(tmp_path)
    done = _verify(root, rel, prelude=SCALED)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines and all(line.startswith(f"{rel}: ") for line in lines)
    assert "capsnet-self" in rel and "rerecord --protocol ci --note" in done.stderr


@pytest.mark.slow
def test_rerecord_adds_then_replaces_changed_records_with_the_note_in_the_changelog(tmp_path):
    sweep = tmp_path / "ci_one.yaml"
    sweep.write_text(f"name: ci_one\nextends: {REPO / 'specs' / 'protocols' / 'ci.yaml'}\n"
                     "sweep:\n  model.routing: [self]\n  model.depth: [0]\n  seed: [0]\n")
    root = tmp_path / "board"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "CAPSBENCH_MALLOC_TUNING": "0", "SOURCE_DATE_EPOCH": "1780000000"}

    def rerecord(note):
        done = subprocess.run([sys.executable, "-m", "capsbench", "leaderboard", "rerecord", "--protocol", "ci",
                               "--specs", str(sweep), "--note", note, "--root", str(root)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "0 record(s) removed, 1 added" in rerecord("first ci records")
    (record,) = (root / "records").rglob("*.json")
    entry = json.loads(record.read_text())
    assert entry["environment"]["numerics"]["mode"] == "portable" and entry["environment"]["cpu_model"]
    entry["metrics"]["test_accuracy"] = 0.5  # what a change of numerics looks like from the leaderboard's side
    record.write_text(json.dumps(entry))
    assert "1 record(s) removed, 1 added" in rerecord("self: numerics changed on purpose")
    changelog = (root / "CHANGELOG.md").read_text()
    assert changelog.count("self: numerics changed on purpose") == 2  # the removal and the addition
    assert json.loads(record.read_text())["metrics"]["test_accuracy"] != 0.5
