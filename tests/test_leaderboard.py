"""The leaderboard: add (no-op, conflict, protocol mixing), versions, deterministic builds, staleness, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from capsbench.cli import main
from capsbench.errors import UserError
from capsbench.report import leaderboard
from capsbench.results import store
from capsbench.results.ledger import read_ledger
from capsbench.results.run_record import write_record
from capsbench.results.testing import fake_run_record, write_fake_run

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fixed_date(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # 2023-11-14: changelog dates do not follow the clock


def sweep(folder: Path, routing="em", depths=(1, 2, 3), seeds=(0, 1), **kw) -> Path:
    for d in depths:
        for s in seeds:
            acc = max(0.1, 0.95 - 0.2 * (d - 1)) - 0.01 * s
            write_fake_run(folder / f"{routing}-d{d}-s{s}", routing=routing, depth=d, seed=s, accuracy=acc,
                           dead=[min(16, 4 * d)] * d, **kw)
    return folder


def new_root(tmp_path: Path) -> Path:
    root = tmp_path / "board"
    root.mkdir()
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_add_then_build_then_check(tmp_path):
    root = new_root(tmp_path)
    result = store.add(root, [sweep(tmp_path / "runs")], note="first sweep")
    assert len(result.added) == 6 and not result.unchanged
    assert result.added[0].startswith("records/test/v1/digits/capsnet-em/")
    assert leaderboard.check(root)  # added but not built: stale
    leaderboard.build(root)
    assert leaderboard.check(root) == []
    for name in ("README.md", "CHANGELOG.md", "index.html", "test/v1/leaderboard.csv", "test/v1/depths.csv",
                 "test/v1/leaderboard.json", "test/v1/digits.png", "test/v1/figures.json"):
        assert (root / name).is_file(), name
    readme = (root / "README.md").read_text()
    assert "| 1 | capsnet-em |" in readme and "### test v1 (leaderboard 1.0.0)" in readme
    assert "](test/v1/digits.png)" in readme  # the figure inline, each link to a built file
    data = json.loads((root / "test/v1/leaderboard.json").read_text())
    assert data["leaderboard_version"] == "1.0.0" and data["datasets"][0]["rows"][0]["runs"] == 6
    assert "## test 1.0.0 (2023-11-14)" in (root / "CHANGELOG.md").read_text()
    html = (root / "index.html").read_text()
    assert '"figure":"test/v1/digits.png"' in html and "capsnet-em" in html  # the page script shows it


def test_adding_the_same_runs_again_is_a_no_op(tmp_path):
    root = new_root(tmp_path)
    runs = sweep(tmp_path / "runs")
    store.add(root, [runs])
    leaderboard.build(root)
    before = tree(root)
    again = store.add(root, [runs])
    assert not again.added and len(again.unchanged) == 6
    assert tree(root) == before and leaderboard.check(root) == []


def test_a_different_result_for_a_committed_key_is_an_error_naming_both_files(tmp_path):
    root = new_root(tmp_path)
    store.add(root, [sweep(tmp_path / "runs", depths=(1,), seeds=(0,))])
    before = tree(root)
    other = write_fake_run(tmp_path / "rerun", routing="em", depth=1, seed=0, accuracy=0.5, dead=[4])
    with pytest.raises(UserError) as info:
        store.add(root, [other])
    message = str(info.value)
    assert "records/test/v1/digits/capsnet-em/" in message and str(other / "record.json") in message
    assert "metrics.test_accuracy" in message and "never overwritten" in message
    assert tree(root) == before  # nothing written


def test_two_new_runs_with_one_key_and_different_results_conflict(tmp_path):
    a = write_fake_run(tmp_path / "a", depth=1, seed=0, accuracy=0.5)
    b = write_fake_run(tmp_path / "b", depth=1, seed=0, accuracy=0.6)
    with pytest.raises(UserError, match=r"a/record.json and .*b/record.json: same run"):
        store.add(new_root(tmp_path), [a, b])


def test_records_of_another_protocol_setting_are_refused(tmp_path):
    root = new_root(tmp_path)
    store.add(root, [sweep(tmp_path / "runs", depths=(1,), seeds=(0,))])
    longer = write_fake_run(tmp_path / "long", depth=2, seed=0, epochs=50)
    with pytest.raises(UserError, match="both claim protocol test v1 but differ in train.epochs 50 vs 2"):
        store.add(root, [longer])
    # a new protocol version is fine, and lives in its own folder and table
    store.add(root, [write_fake_run(tmp_path / "v2", depth=2, seed=0, epochs=50, protocol_version="2")])
    leaderboard.build(root)
    assert (root / "test/v2/leaderboard.csv").exists() and (root / "test/v1/leaderboard.csv").exists()


def test_versions_minor_for_new_methods_patch_for_more_seeds(tmp_path):
    root = new_root(tmp_path)
    store.add(root, [sweep(tmp_path / "em", seeds=(0,))])
    store.add(root, [sweep(tmp_path / "em2", seeds=(1,))])
    store.add(root, [sweep(tmp_path / "self", routing="self")], note="self routing")
    store.add(root, [sweep(tmp_path / "mnist", dataset="mnist", seeds=(0,))])
    changes = read_ledger(root)["changes"]
    assert [c["version"] for c in changes] == ["1.0.0", "1.0.1", "1.1.0", "1.2.0"]
    assert changes[2]["new"] == ["digits/capsnet-self"] and changes[2]["note"] == "self routing"
    assert changes[3]["new"] == ["mnist/capsnet-em"]
    leaderboard.build(root)
    assert "(leaderboard 1.2.0)" in (root / "README.md").read_text()


def test_remove_is_logged_and_allows_a_corrected_record(tmp_path):
    root = new_root(tmp_path)
    result = store.add(root, [sweep(tmp_path / "runs", depths=(1,), seeds=(0,))])
    with pytest.raises(UserError, match="--note"):
        store.remove(root, [root / result.added[0]], note="")
    store.remove(root, [root / result.added[0]], note="wrong data split")
    store.add(root, [write_fake_run(tmp_path / "fixed", depth=1, seed=0, accuracy=0.5)])
    assert [c["version"] for c in read_ledger(root)["changes"]] == ["1.0.0", "1.0.1", "1.0.2"]
    leaderboard.build(root)
    assert leaderboard.check(root) == []
    assert "wrong data split" in (root / "CHANGELOG.md").read_text()


def test_builds_are_byte_identical_and_a_second_build_writes_nothing(tmp_path):
    runs = [sweep(tmp_path / "em"), sweep(tmp_path / "vb", routing="vb"),
            sweep(tmp_path / "cnn", depths=(1, 3), seeds=(0,), arch="timm_resnet")]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    store.add(a, runs)
    store.add(b, list(reversed(runs)))  # other order: same records, same bytes
    leaderboard.build(a)
    # b is built by a fresh interpreter through the console entry point
    result = subprocess.run([sys.executable, "-m", "capsbench", "leaderboard", "build", "--root", str(b)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert tree(a) == tree(b)
    assert leaderboard.build(a) == []  # nothing changed, nothing written (PNGs not re-rendered)
    shutil.rmtree(a / "test")
    (a / "index.html").unlink()
    leaderboard.build(a)  # from scratch: the same PNG bytes too
    assert tree(a) == tree(b)
    assert "timm_resnet (baseline)" in (a / "README.md").read_text()


def test_check_detects_every_kind_of_staleness(tmp_path):
    root = new_root(tmp_path)
    store.add(root, [sweep(tmp_path / "runs")])
    leaderboard.build(root)
    built = tree(root)

    def restore():
        for rel, data in built.items():
            (root / rel).write_bytes(data)

    cases = {
        "test/v1/leaderboard.csv": lambda: (root / "test/v1/leaderboard.csv").write_text("edited\n"),
        "README.md": lambda: (root / "README.md").write_text(
            (root / "README.md").read_text().replace("capsnet-em", "capsnet-xx")),
        "test/v1/digits.png": lambda: (root / "test/v1/digits.png").write_bytes(built["test/v1/digits.png"] + b"x"),
        "test/v1/old.csv": lambda: (root / "test/v1/old.csv").write_text("left over\n"),
        "index.html": lambda: (root / "index.html").unlink(),
    }
    for name, damage in cases.items():
        damage()
        problems = leaderboard.check(root)
        assert len(problems) == 1 and problems[0].startswith(str(root / name)), (name, problems)
        restore()
        (root / "test/v1/old.csv").unlink(missing_ok=True)
        assert leaderboard.check(root) == []
    # a new record (added properly) makes the tables and the figure stale until rebuilt
    store.add(root, [sweep(tmp_path / "more", seeds=(2,))])
    stale = "\n".join(leaderboard.check(root))
    assert "leaderboard.csv" in stale and "digits.png: stale figure" in stale and "README.md" in stale
    leaderboard.build(root)
    assert leaderboard.check(root) == []


def test_hand_written_readme_text_outside_the_markers_is_kept(tmp_path):
    root = new_root(tmp_path)
    store.add(root, [sweep(tmp_path / "runs", depths=(1,), seeds=(0,))])
    leaderboard.build(root)
    readme = root / "README.md"
    readme.write_text("# Our board\n\nIntro written by hand.\n" + readme.read_text().split("\n", 1)[1] + "\nOutro.\n")
    assert leaderboard.check(root) == []
    leaderboard.build(root)
    assert readme.read_text().startswith("# Our board\n\nIntro written by hand.") and "Outro." in readme.read_text()
    readme.write_text("no markers\n")
    with pytest.raises(UserError, match="README.md: expected the markers"):
        leaderboard.check(root)


def test_a_tampered_ledger_is_invalid(tmp_path):
    root = new_root(tmp_path)
    store.add(root, [sweep(tmp_path / "runs", depths=(1,), seeds=(0,))])
    store.add(root, [sweep(tmp_path / "more", depths=(1,), seeds=(1,))])
    leaderboard.build(root)
    ledger = json.loads((root / "changes.json").read_text())
    ledger["changes"][1]["version"] = "1.1.0"  # only more seeds: that is a PATCH
    (root / "changes.json").write_text(json.dumps(ledger))
    with pytest.raises(UserError, match=r"changes.json: changes.1: expected version 1.0.1 and new \[\], got 1.1.0"):
        leaderboard.check(root)
    ledger["changes"].pop(1)  # forgets a record that is still there
    (root / "changes.json").write_text(json.dumps(ledger))
    with pytest.raises(UserError, match="not in .*changes.json"):
        leaderboard.check(root)


def test_records_copied_in_by_hand_or_moved_are_invalid(tmp_path):
    root = new_root(tmp_path)
    result = store.add(root, [sweep(tmp_path / "runs", depths=(1, 2), seeds=(0,))])
    leaderboard.build(root)
    first = root / result.added[0]
    copy = first.parent / "0123456789ab-s7.json"
    shutil.copy(first, copy)
    with pytest.raises(UserError, match="0123456789ab-s7.json: misplaced record"):
        leaderboard.check(root)
    copy.unlink()
    # a valid record that skipped `leaderboard add` (not in changes.json)
    other = tmp_path / "other"
    store.add(other, [write_fake_run(tmp_path / "d3", depth=3, seed=0)])
    rel = next(iter(store.read_records(other)))
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(other / rel, root / rel)
    with pytest.raises(UserError, match="not in .*changes.json.*capsbench leaderboard add"):
        leaderboard.check(root)
    (root / rel).unlink()
    entry = json.loads(first.read_text())
    entry["metrics"]["test_accuracy"] = 2.0
    first.write_text(json.dumps(entry))
    with pytest.raises(UserError, match=r"capsnet-em/.*\.json: metrics.test_accuracy: 2.0 is greater than"):
        leaderboard.check(root)


def test_unfinished_runs_are_skipped_with_a_warning(tmp_path):
    runs = sweep(tmp_path / "runs", depths=(1,), seeds=(0,))
    (runs / "running").mkdir()
    (runs / "running" / "config.yaml").write_text("seed: 0\n")
    (runs / "running" / "metrics.jsonl").write_text("")
    lines = []
    result = store.add(new_root(tmp_path), [runs], log=lines.append)
    assert len(result.added) == 1 and result.skipped == [runs / "running"]
    assert "running: not finished" in lines[0]


def test_failed_runs_are_added_and_counted(tmp_path):
    root = new_root(tmp_path)
    runs = sweep(tmp_path / "runs", depths=(1,), seeds=(0,))
    write_fake_run(runs / "nan", depth=2, seed=0, status="diverged")
    store.add(root, [runs])
    leaderboard.build(root)
    readme = (root / "README.md").read_text()
    assert "1 (1 diverged)" in readme
    assert ",false,2,1,0,1,0,0,,,0," in (root / "test/v1/depths.csv").read_text()  # depth 2: 1 run, 1 diverged


# ----------------------------------------------------------------------------- command line


def test_cli_exit_codes(tmp_path, capsys):
    root = new_root(tmp_path)
    runs = sweep(tmp_path / "runs", depths=(1,), seeds=(0, 1))
    assert main(["leaderboard", "build", "--root", str(root)]) == 0
    assert main(["leaderboard", "check", "--root", str(root)]) == 0
    assert main(["leaderboard", "add", str(runs), "--root", str(root), "--note", "x"]) == 0
    assert main(["leaderboard", "check", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "stale: " + str(root / "README.md") in err and "capsbench leaderboard build" in err
    assert main(["leaderboard", "build", "--root", str(root)]) == 0
    assert main(["leaderboard", "check", "--root", str(root)]) == 0
    assert main(["leaderboard", "add", str(runs), "--root", str(root)]) == 0  # no-op
    write_record(runs / "r0" / "record.json", fake_run_record(depth=1, seed=0, accuracy=0.01))
    capsys.readouterr()
    assert main(["leaderboard", "add", str(runs / "r0"), "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "never overwritten" in err
    assert main(["leaderboard", "add", str(tmp_path / "nowhere"), "--root", str(root)]) == 2
    assert main(["leaderboard", "check", "--root", str(tmp_path / "nowhere")]) == 2
    record = next((root / "records").rglob("*.json"))
    assert main(["leaderboard", "remove", str(record), "--root", str(root), "--note", "bad split"]) == 0
    assert not record.exists()
    assert main(["leaderboard", "remove", str(record), "--root", str(root), "--note", "again"]) == 2
    assert main(["leaderboard", "check", "--root", str(root)]) == 1


def test_the_committed_leaderboard_is_valid_and_up_to_date():
    """What CI runs: a pull request that adds records without rebuilding fails here."""
    assert leaderboard.check(REPO / "leaderboard") == []
