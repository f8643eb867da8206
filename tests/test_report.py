"""`capsbench report`: every figure renders from saved run directories, without re-training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from capsbench.cli import main
from capsbench.report.rundir import RunDir, parse_epochs
from capsbench.results.testing import write_fake_run

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """One tiny real run (2 epochs of 2 steps) from the quickstart spec: the real run-directory layout."""
    out = tmp_path_factory.mktemp("runs")
    code = main(["run", str(REPO / "specs/quickstart.yaml"), "--out", str(out), "--quiet", "train.epochs=2",
                 "data.subset=200", "train.max_steps_per_epoch=2", "sweep.model.depth=[2]"])
    assert code in (0, 1)  # a tiny run may diverge; the report must draw it either way
    return out


def real_run(sweep: Path) -> Path:
    return next(p.parent for p in sweep.rglob("record.json"))


def png_shape(path: Path) -> tuple[int, ...]:
    from matplotlib.image import imread

    return imread(path).shape


def test_every_figure_renders_from_a_saved_run(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(sweep), "--out", str(out)]) == 0
    run = real_run(sweep)
    figures = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert figures == [
        "quickstart-v1/digits-depth.png",
        "quickstart-v1/digits-gradients.png",
        f"runs/{run.name}/activations.png",
        f"runs/{run.name}/gradients.png",
        f"runs/{run.name}/mechanism.png",  # the run recorded the mechanism telemetry (on by default)
    ]
    for name in figures:
        height, width, _ = png_shape(out / name)
        assert height > 200 and width > 400, name
    index = (out / "index.html").read_text()
    for name in figures:
        assert f'src="{name}"' in index
    assert run.name in index and "capsnet-self" in index
    # first,last: both epochs are drawn, as two panels of one image
    data = __import__("capsbench.report.activations", fromlist=["x"]).activation_data(RunDir(run), [1, 2])
    assert [p["epoch"] for p in data["panels"]] == [1, 2]
    assert [name for name, _ in data["panels"][0]["layers"]] == ["primary", "conv1", "conv2", "class"]


def test_the_report_needs_no_torch_and_draws_the_same_bytes_twice(sweep, tmp_path):
    """Rendering never builds a model: torch is not even imported (a fresh interpreter checks)."""
    script = (
        "import sys\nfrom capsbench.cli import main\n"
        f"assert main(['report', {str(sweep)!r}, '--out', {str(tmp_path / 'a')!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'the report imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    assert main(["report", str(sweep), "--out", str(tmp_path / "b")]) == 0
    a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()}
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a if k.suffix == ".png")


def test_an_unfinished_run_still_gets_its_per_run_figures(sweep, tmp_path):
    run = tmp_path / "partial"
    shutil.copytree(real_run(sweep), run)
    (run / "record.json").unlink()
    (run / "checkpoint.pt").unlink(missing_ok=True)
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out), "--epochs", "1"]) == 0
    assert (out / "runs/partial/activations.png").exists() and (out / "runs/partial/gradients.png").exists()
    assert not list(out.glob("*/*-depth.png"))  # no record, no accuracy: nothing to put against depth
    assert RunDir(run).layer_order() == ["primary", "conv1", "conv2", "class"]  # from metrics.jsonl kinds


def crafted_run(path: Path, epochs=(1, 2, 3, 4, 5, 6), depth=3) -> Path:
    """A run directory whose capsules die during training (like the paper's Figure 6)."""
    write_fake_run(path, routing="em", depth=depth, dead=[16] * depth, accuracy=0.11, epochs=max(epochs))
    names = ["primary", *(f"conv{i}" for i in range(1, depth + 1)), "class"]
    arrays, lines = {}, []
    for e in epochs:
        for i, name in enumerate(names):
            arrays[f"val/epoch{e:03d}/{name}"] = np.full(10 if name == "class" else 16, 0.5 / (e * e * (i + 1)))
        lines.append({"epoch": e, "val_accuracy": 0.5 / e,
                      "grad_norms": {n: {"weight": 10.0 ** -(len(names) - i)} for i, n in enumerate(names)}})
    np.savez(path / "activations.npz", **arrays)
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_epoch_choice_all_and_explicit(tmp_path, capsys):
    run = crafted_run(tmp_path / "runs" / "em3")
    assert RunDir(run).select_epochs(parse_epochs("first,last"), "val") == ([1, 6], [])
    assert RunDir(run).select_epochs(parse_epochs("2,9"), "val") == ([2], [9])
    out = tmp_path / "all"
    assert main(["report", str(run), "--out", str(out), "--epochs", "all"]) == 0
    assert sorted(p.name for p in (out / "runs/em3").glob("activations*.png")) == ["activations-1.png",
                                                                                    "activations-2.png"]
    assert main(["report", str(run), "--out", str(tmp_path / "some"), "--epochs", "2,9"]) == 0
    assert "no val epoch 9" in capsys.readouterr().err


def test_dead_capsules_are_counted_in_the_grid(tmp_path):
    from capsbench.report.activations import activation_data, activation_figure
    from capsbench.report.style import figure_style

    run = RunDir(crafted_run(tmp_path / "em3"))
    with figure_style():
        fig = activation_figure(activation_data(run, [1, 6]))
    first, last = ([t.get_text() for t in ax.get_yticklabels()] for ax in fig.axes[:2])
    # rows top to bottom in forward order; 0.5 / (epoch^2 * (layer + 1)) <= 0.01 is dead
    assert first == ["class  (0/10 dead)", "conv3  (0/16 dead)", "conv2  (0/16 dead)", "conv1  (0/16 dead)",
                     "primary  (0/16 dead)"]
    assert last == ["class  (10/10 dead)", "conv3  (16/16 dead)", "conv2  (16/16 dead)", "conv1  (16/16 dead)",
                    "primary  (0/16 dead)"]
    assert fig.axes[0].get_title() == "epoch 1, validation accuracy 50.0%"


@pytest.mark.parametrize("bad", [["--epochs", "middle"], ["--epochs", "0"], ["--epochs", ","]])
def test_bad_epochs_exit_2_with_one_line(tmp_path, capsys, bad):
    run = crafted_run(tmp_path / "em3")
    assert main(["report", str(run), *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --epochs: expected") and "\n" not in err


def test_missing_paths_and_corrupt_files_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    run = crafted_run(tmp_path / "em3")
    (run / "metrics.jsonl").write_text("{broken\n")
    assert main(["report", str(run)]) == 2
    assert "metrics.jsonl: line 1 is not valid JSON" in capsys.readouterr().err


def test_gradient_depth_figure_shows_mean_and_interval_over_seeds(tmp_path):
    """Issue 13 item 5: every depth figure shows the mean over seeds and its 95% interval, not single runs."""
    from capsbench.report import gradients
    from capsbench.report.style import figure_style, save_png

    rows = [{"name": "capsnet-em", "baseline": False, "depth": 2, "primary": p, "backbone": 1.0}
            for p in (1e-3, 1e-2, 1e-1)]
    rows.append({"name": "capsnet-em", "baseline": False, "depth": 3, "primary": 5e-2, "backbone": None})
    data = gradients.depth_data(rows, "t")
    line = data["lines"][0]
    assert line["primary"] == [pytest.approx(1e-2), pytest.approx(5e-2)]  # geometric mean of 1e-3, 1e-2, 1e-1
    low, high = line["primary_ci95"][0]  # t(2) = 4.3027 on log10 values with standard deviation 1
    assert (low, high) == (pytest.approx(10 ** (-2 - 4.3027 / 3**0.5), rel=1e-4),
                           pytest.approx(10 ** (-2 + 4.3027 / 3**0.5), rel=1e-4))
    assert line["primary_ci95"][1] is None and line["primary_seeds"] == [3, 1]  # one seed: no interval
    assert line["backbone_ci95"] == [[1.0, 1.0], None]
    with figure_style():
        save_png(gradients.depth_figure(data), tmp_path / "g.png")
    assert png_shape(tmp_path / "g.png")[0] > 100
