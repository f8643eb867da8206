"""benchmarks/gpu_check.py, the driver of the GPU check, run on the CPU so it is known to work before a GPU is lent."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DRIVER = REPO / "benchmarks" / "gpu_check.py"


def load_driver():
    spec = importlib.util.spec_from_file_location("gpu_check", DRIVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_plan_covers_every_routing_depth_impl_and_precision():
    from capsbench.registry import ROUTINGS

    driver = load_driver()
    routing_rows, paper_rows = driver.plan(driver.parse_args(["--device", "cuda"]))
    impls = 2 if driver.switch_exists() else 1
    assert len(routing_rows) == len(ROUTINGS.names()) * 3 * 2 * impls
    assert {r["depth"] for r in routing_rows} == {1, 5, 10}
    assert {r["amp"] for r in routing_rows} == {"off", "bf16"}
    assert all(
        "train.batch_size=128" in r["overrides"] and "data.image_size=32" in r["overrides"] for r in routing_rows
    )
    assert all("model.checkpointing=false" in r["overrides"] and r["depth"] == 10 for r in paper_rows)
    assert len(paper_rows) == len(driver.PAPER_SPECS) * impls
    # the Triton kernel only serves layers that do not keep their coefficients
    assert all("model.options.keep_coefficients=false" in r["overrides"] for r in routing_rows + paper_rows)


def test_table_reports_speed_up_and_unavailable_fused_paths():
    driver = load_driver()
    row = {"routing": "em", "depth": 10, "amp": "off", "peak_memory_mb": 2048.0}
    rows = [
        {**row, "impl": "reference", "train_step_ms": 300.0, "routing_impl": ["reference"]},
        {**row, "impl": "fused", "train_step_ms": 20.0, "routing_impl": {"conv1": "fused"}},
        {**row, "routing": "self", "impl": "fused", "error": "UserError: no fused implementation for 'self'"},
    ]
    paper = [{"routing": "em", "impl": "fused", "depth": 10, "error": "OutOfMemoryError: CUDA"}]
    text = driver.table(rows, paper, switch=True)
    assert "| em | 10 | 300.0 ms, 2.00 GB (reference) | 20.0 ms, 2.00 GB (fused) | - | - | 15.0x |" in text
    assert "| self | 10 | - | n/a |" in text
    assert "| em | fused | 10 | - | OutOfMemoryError: CUDA |" in text


@pytest.mark.slow
def test_cpu_smoke_run_writes_every_result(tmp_path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, str(DRIVER), "--device", "cpu", "--smoke", "--out", str(tmp_path)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    routing = json.loads((tmp_path / "routing.json").read_text())
    paper = json.loads((tmp_path / "paper.json").read_text())
    from capsbench.registry import ROUTINGS

    assert {r["routing"] for r in routing} == set(ROUTINGS.names())  # every registered routing
    assert {r["routing"] for r in paper} == {"em", "vb", "self", "dynamic"}
    for r in routing + paper:
        if r.get("impl") == "fused" and "error" in r:
            continue  # a routing without a fused path
        assert r["loss_finite"] and r["train_step_ms"] > 0, r
    layers = {r["impl"]: r for r in json.loads((tmp_path / "layer.json").read_text())}
    assert layers["reference"]["fwd_bwd_ms"] > 0
    assert "unavailable on cpu" in layers["fused"]["error"]
    assert json.loads((tmp_path / "environment.json").read_text())["device"] == "cpu"
    assert "| paper protocol, no checkpointing |" in (tmp_path / "table.md").read_text()


def test_layer_table_puts_each_path_next_to_its_floor():
    driver = load_driver()
    model = driver.em_layer_model()
    # the fused path moves ~1% of the reference's bytes per window and is compute-bound
    assert model["fused_bytes"] < model["reference_bytes"] / 100
    assert model["fused_flops"] / driver.FP32_FLOP_PER_S > model["fused_bytes"] / driver.HBM_BYTES_PER_S
    rows = [
        {"windows": 2048, "impl": "reference", "fwd_bwd_ms": 40.0, "peak_memory_mb": 3072.0},
        {"windows": 2048, "impl": "fused", "tiles": (2, 2, 2, 4, 4), "fwd_bwd_ms": 2.0, "peak_memory_mb": 512.0},
    ]
    text = driver.layer_table(rows)
    floor = driver.floor_ms("fused", 2048)
    assert f"| fused tiles 2/2/2/4/4 | 2048 | 2.0 | {floor:.3f} | {2.0 / floor:.1f} | 0.50 | 20.0x |" in text


def test_tile_sweep_starts_with_the_shipped_tiles_and_restores_them():
    from capsbench.capsules.routing.kernels import triton_em

    driver = load_driver()
    shipped = tuple(getattr(triton_em, knob) for knob in driver.TILE_KNOBS)
    assert driver.TILE_SWEEP[0] == shipped
    with driver.tiles(driver.TILE_SWEEP[1]):
        assert tuple(getattr(triton_em, knob) for knob in driver.TILE_KNOBS) == driver.TILE_SWEEP[1]
    assert tuple(getattr(triton_em, knob) for knob in driver.TILE_KNOBS) == shipped
