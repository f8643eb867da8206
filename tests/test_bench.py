"""``capsbench bench``: the training step and the evaluation batch, each measured as the runner runs it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from capsbench import spec
from capsbench.bench import measure
from capsbench.cli import main

QUICKSTART = Path(__file__).resolve().parent.parent / "specs" / "quickstart.yaml"


@pytest.fixture(scope="module")
def cfg():
    overrides = ["sweep.model.depth=[1]", "train.batch_size=4", "train.eval_batch_size=12", "data.image_size=8"]
    return spec.load(str(QUICKSTART), overrides)[0].config


def test_eval_phase_measures_one_evaluation_batch_at_the_eval_batch_size(cfg):
    result = measure(cfg, steps=1, warmup=0, phase="eval")
    assert result["phase"] == "eval" and result["batch_size"] == 12
    assert result["eval_step_ms"] > 0 and "train_step_ms" not in result
    assert math.isfinite(result["last_loss"]) and result["peak_memory_mb"] > 0


def test_eval_phase_never_trains_and_train_phase_does(cfg):
    # warm-up steps run the same phase first: evaluation leaves the weights alone, training moves them
    evals = [measure(cfg, steps=1, warmup=w, phase="eval")["last_loss"] for w in (0, 2)]
    trains = [measure(cfg, steps=1, warmup=w, phase="train")["last_loss"] for w in (0, 2)]
    assert evals[0] == evals[1]
    assert trains[0] != trains[1]
    assert measure(cfg, steps=1, warmup=0, phase="train")["batch_size"] == 4


def test_unknown_phase_is_one_line_exit_2(capsys):
    assert main(["bench", str(QUICKSTART), "--phase", "valid"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--phase" in err[0] and "train, eval" in err[0]
