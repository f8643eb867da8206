"""The leaderboard's remedies view (capsbench/report/remedies_view.py), on crafted records."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from capsbench.report import leaderboard
from capsbench.report.remedies_view import applies, human_rows, remedies_view
from capsbench.results import store
from capsbench.results.scores import aggregate
from capsbench.results.store import read_records
from capsbench.results.testing import write_fake_run

SEEDS = (0, 1, 2)


@pytest.fixture(autouse=True)
def _fixed_date(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")


def _runs(folder: Path, name: str, depths, accuracy, dead, **kw) -> None:
    """Fake runs of one row: ``accuracy(depth, seed)``, ``dead(depth)`` types dead in every ConvCaps layer."""
    for d in depths:
        for s in SEEDS:
            write_fake_run(folder / f"{name}-d{d}-s{s}", depth=d, seed=s, accuracy=accuracy(d, s),
                           dead=[dead(d)] * d, **kw)


def _board(tmp_path: Path, with_remedies: bool = True) -> Path:
    runs = tmp_path / "runs"
    depths = (1, 2, 3, 4)
    # plain dynamic routing: at chance (0.1) from depth 3, half its types dead from depth 2
    _runs(runs, "dyn", depths, lambda d, s: max(0.1, 0.9 - 0.4 * (d - 1)) + 0.01 * s, lambda d: 4 * d,
          routing="dynamic")
    if with_remedies:
        _runs(runs, "dyn-init", depths, lambda d, s: 0.9 - 0.02 * d - 0.01 * s, lambda d: 0, routing="dynamic",
              extra_config={"model.init": "length"})
        # the collapse seed-dependent: seed 2 never collapses
        _runs(runs, "self-pre", depths, lambda d, s: 0.12 if (d == 4 and s < 2) else 0.8, lambda d: 1,
              routing="self", residual=True, extra_config={"model.residual_style": "pre"})
    # two em rows with no remedy that differ otherwise (a control arm): the view tells them apart
    _runs(runs, "em", depths, lambda d, s: 0.8, lambda d: 2, routing="em")
    _runs(runs, "em-uniform", depths, lambda d, s: 0.7, lambda d: 2, routing="em",
          extra_config={"model.routing_options": {"coefficients": "uniform"}})
    if with_remedies:  # and one that differs from the default beyond routing options (its arm reads "default" too)
        _runs(runs, "em-it3", depths, lambda d, s: 0.75, lambda d: 2, routing="em",
              extra_config={"model.iterations": 3})
    # a CNN baseline trained deeper than the capsule rows: at matched depth only depths 1-4 count
    _runs(runs, "cnn", (1, 2, 4, 6, 8), lambda d, s: 0.99 if d <= 4 else 0.5 - 0.01 * s, lambda d: 0,
          arch="timm_resnet")
    root = tmp_path / "board"
    root.mkdir()
    store.add(root, [runs], note="crafted")
    return root


def _view(root: Path) -> dict:
    entries = list(read_records(root).values())
    return remedies_view(aggregate(entries), entries)


def test_each_routing_and_remedy_gets_the_leaderboards_scores_and_intervals(tmp_path):
    root = _board(tmp_path)
    entries = list(read_records(root).values())
    assert applies(entries)
    tab = remedies_view(aggregate(entries), entries)["digits"]
    rows = {(r["routing"], r["remedy"]): r for r in tab["rows"]}
    assert tab["depths"] == [1, 2, 3, 4]
    plain, init = rows[("dynamic", "none")], rows[("dynamic", "init=length")]
    assert plain["scores"]["collapse_depth"] == 3 and plain["score_intervals"]["collapse_depth"] == [3, 3]
    assert plain["scores"]["half_dead_depth"] == 2
    assert init["scores"]["collapse_depth"] is None and init["scores"]["half_dead_depth"] is None
    pre = rows[("self", "res+skip=pre")]
    assert pre["scores"]["collapse_depth"] is None  # the mean over seeds at depth 4 (0.35) is above chance + 5
    assert pre["score_intervals"]["collapse_depth"] == [4, None]  # but two seeds collapse at 4, one never
    # retention: the same number and interval as the leaderboard row it comes from
    board = {(r["method"], r["variant"]): r for r in aggregate(entries)["digits"]["rows"]}
    for row in tab["rows"]:
        if not row["baseline"]:
            source = board[(row["method"], row["variant"])]
            assert row["scores"] == source["scores"] and row["score_intervals"] == source["score_intervals"]
    assert init["score_intervals"]["retention"][0] < init["scores"]["retention"] < 1.0
    # routing and remedy agree, configs differ: named by their arm, and by the variant hash where arms agree too
    em = sorted(r["remedy"] for r in tab["rows"] if r["routing"] == "em")
    assert em[0] == "none · control (uniform coefficients)" and len(em) == 3 and em[1] != em[2]
    assert all(label.startswith("none · default [") and len(label) == len("none · default [123456]")
               for label in em[1:])


def test_each_row_names_the_depths_its_scores_are_over(tmp_path):
    """A screened remedy covers fewer depths than its plain preset: its retention is over its own depths only."""
    root = _board(tmp_path)
    runs = tmp_path / "more"
    _runs(runs, "dyn-ln", (3, 4), lambda d, s: 0.1, lambda d: 0, routing="dynamic",
          extra_config={"model.pose_norm": True, "model.pose_norm_kind": "layer"})
    store.add(root, [runs], note="a screened remedy")
    rows = {cells[1]: cells for cells in human_rows(_view(root)["digits"])}
    assert rows["none"][2] == "1, 2, 3, 4" and rows["pose-norm+norm=layer"][2] == "3, 4"
    assert rows["pose-norm+norm=layer"][5] == "1.00 [1.00, 1.00]"  # at chance at both: retention says nothing else
    # ... which the plain preset's line does: 0.1 against plain dynamic's best, 0.91 (depth 1, mean of 3 seeds)
    assert rows["pose-norm+norm=layer"][7] == "0.11 [0.11, 0.11]"
    # the plain preset against itself: its retention (the interval differs: retention's is over per-seed ratios)
    assert rows["none"][7].split()[0] == rows["none"][5].split()[0]


def test_deepest_against_the_plain_preset_only_where_the_plain_preset_is_one_row(tmp_path):
    tab = _view(_board(tmp_path))["digits"]
    rows = {(r["routing"], r["remedy"]): r for r in tab["rows"]}
    init = rows[("dynamic", "init=length")]
    plain = rows[("dynamic", "none")]
    best = plain["scores"]["best_accuracy"]
    assert init["vs_plain"]["plain_best"] == best and init["vs_plain"]["plain_best_depth"] == 1
    assert init["vs_plain"]["value"] == pytest.approx(init["scores"]["deepest_accuracy"] / best)
    low, high = init["score_intervals"]["deepest_accuracy"]
    assert init["vs_plain"]["ci95"] == pytest.approx([low / 0.91, high / 0.91])
    assert rows[("self", "res+skip=pre")]["vs_plain"] is None  # self has no plain preset row here
    # em's two default rows differ only beyond their arm: which is "the" plain preset would be arbitrary
    assert all(r["vs_plain"] is None for r in tab["rows"] if r["routing"] == "em")
    cells = {(c[0], c[1]): c for c in human_rows(tab)}
    assert cells[("timm_resnet", "baseline")][7] == "n/a" and cells[("self", "res+skip=pre")][7] == "–"


def test_baselines_are_scored_at_matched_depth(tmp_path):
    tab = _view(_board(tmp_path))["digits"]
    (cnn,) = [r for r in tab["rows"] if r["baseline"]]
    assert [d["depth"] for d in cnn["depths"]] == [1, 2, 4]  # 6 and 8 have no capsule row to match
    assert cnn["scores"]["deepest_depth"] == 4 and cnn["scores"]["retention"] == pytest.approx(1.0)
    assert cnn["runs"] == 9 and cnn["remedy"] == "baseline"


def test_build_writes_the_view_and_check_keeps_it_fresh(tmp_path):
    root = _board(tmp_path)
    leaderboard.build(root)
    assert leaderboard.check(root) == []
    rows = list(csv.DictReader(io.StringIO((root / "test/v1/remedies.csv").read_text())))
    init = next(r for r in rows if r["remedy"] == "init=length")
    assert init["routing"] == "dynamic" and init["collapse_depth"] == "" and init["matched_depths"] == "1 2 3 4"
    assert (root / "test/v1/digits-remedies.png").is_file()
    readme = (root / "README.md").read_text()
    assert "### test v1: remedies" in readme and "| dynamic | init=length | 1, 2, 3, 4 | never | never |" in readme
    assert "| timm_resnet | baseline |" in readme and "](test/v1/digits-remedies.png)" in readme
    assert "<h2>Remedies</h2>" in (root / "index.html").read_text()
    (root / "test/v1/remedies.csv").write_text("edited\n")
    assert any("remedies.csv" in line for line in leaderboard.check(root))


def test_no_view_without_a_remedy(tmp_path):
    root = _board(tmp_path, with_remedies=False)
    leaderboard.build(root)
    assert not (root / "test/v1/remedies.csv").exists() and not (root / "test/v1/digits-remedies.png").exists()
    assert "remedies" not in (root / "README.md").read_text() and "<h2>Remedies</h2>" not in (
        root / "index.html").read_text()


def test_the_figure_has_a_row_per_routing_with_the_baselines_in_each(tmp_path):
    from capsbench.report.remedies_figure import KIND, figure_data, remedies_figure
    from capsbench.report.style import figure_style

    tab = _view(_board(tmp_path))["digits"]
    data = figure_data(tab, "digits · remedies")
    assert [g["routing"] for g in data["groups"]] == ["dynamic", "em", "self"]
    assert {line["remedy"] for line in data["groups"][0]["lines"]} == {"none", "init=length"}
    assert [line["name"] for line in data["baselines"]] == ["timm_resnet · matched depth"]
    assert data["baselines"][0]["depth"] == [1, 2, 4]  # at matched depth only
    with figure_style():
        fig = remedies_figure(data)
    assert len(fig.axes) == 2 * 3
    acc = fig.axes[0]
    labels = acc.get_legend_handles_labels()[1]
    assert "none, n=3" in labels and "timm_resnet · matched depth (baseline), n=3" in labels
    assert leaderboard.render(tmp_path / "board").figures["test/v1/digits-remedies.png"].kind == KIND
