"""Cost of EM's evaluation pass with the mechanism telemetry on, beside its training step (long-cpu protocol).

    OMP_NUM_THREADS=1 python benchmarks/em_eval_cost.py [--depths 10,30] [--arms arms/em.yaml] [--steps 1] [--tag TAG]
        [--checkpoint RUN_DIR]

Telemetry switches each routing's ``diagnostics`` on for the validation epochs. EM's fast path used to hand
those batches to its reference path (every vote of the layer materialised); it now keeps the compiled kernel
and recomputes the activation terms of the last M-step a block of windows at a time (``EMRouting._final_terms``).
Rows, each ``capsbench bench`` in a fresh process (one warm-up): the training step (batch 32); one
evaluation batch (batch ``train.eval_batch_size`` = 256) with telemetry on the fast path, as runs now
evaluate; the same without telemetry; and with telemetry on ``model.routing_impl=reference``, which is what
every validation epoch ran before. CPU time of the single-threaded process and its peak RSS. Writes
``results/em-eval-cost-<tag>.json`` (with the machine) and prints a Markdown table.

An untrained model overstates the evaluation's CPU time: in eval mode its BatchNorms use their initial
running statistics, and the kernel's E-step then works on denormal numbers (measured 3x slower at depth 10;
a trained model's evaluation costs what its training forward does). So with ``--checkpoint RUN_DIR`` (a run
folder holding ``checkpoint.pt``, i.e. one still training or interrupted) the three evaluation cases also run
on that trained model, over its whole validation set in one batch, exactly as ``train.loop.evaluate`` does
(one fresh process each).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from remedies_depth_cost import arguments, machine, measure

from capsbench.env import environment
from capsbench.io import write_json
from capsbench.malloc import tuned_env

HERE = Path(__file__).resolve().parent
SPEC = HERE.parent / "specs" / "remedies" / "screening.yaml"
CASES = {  # name -> phase, overrides
    "train step": ("train", ()),
    "eval, telemetry, fast path": ("eval", ("metrics.mechanism=true",)),
    "eval, no telemetry": ("eval", ("metrics.mechanism=false",)),
    "eval, telemetry, reference path (before)": ("eval", ("metrics.mechanism=true", "model.routing_impl=reference")),
}


def evaluate_checkpoint(run_dir: str, impl: str, mechanism: bool) -> dict:
    """One validation pass of ``run_dir``'s checkpoint (this process): CPU s, accuracy and peak RSS."""
    import time

    import torch
    from omegaconf import OmegaConf

    from capsbench.config import RunConfig
    from capsbench.data import build_data
    from capsbench.metrics.system import process_peak_rss_mb
    from capsbench.train.loop import Trainer, evaluate
    from capsbench.train.parts import build_model, build_run_loss

    run = Path(run_dir)
    cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(run / "config.yaml"))
    cfg.model.routing_impl = impl
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    data = build_data(cfg.data)
    model = build_model(cfg, data)
    model.load_state_dict(state["model"])
    _, loss_fn = build_run_loss(cfg, model)
    trainer = Trainer(model, model, loss_fn, None, torch.device("cpu"))
    x = torch.stack([data.val[k][0] for k in range(len(data.val))])
    y = torch.tensor([int(data.val[k][1]) for k in range(len(data.val))])
    start = time.process_time()
    result = evaluate(trainer, [(x, y)], progress=0.5, threshold=float(cfg.metrics.dead_threshold),
                      mechanism=mechanism)  # fmt: skip
    cpu_s = time.process_time() - start
    return {"epoch": state["epoch"], "images": len(x), "cpu_s": cpu_s, "accuracy": result.accuracy,
            "loss": result.loss, "peak_rss_gb": process_peak_rss_mb() / 1024}  # fmt: skip


CHECKPOINT_CASES = {  # name -> model.routing_impl, telemetry
    "eval, telemetry, fast path": ("auto", True),
    "eval, no telemetry": ("auto", False),
    "eval, telemetry, reference path (before)": ("reference", True),
}


def checkpoint_rows(run_dir: str) -> list[dict]:
    rows = []
    for case, (impl, mechanism) in CHECKPOINT_CASES.items():
        child = subprocess.run(
            [sys.executable, __file__, "--child", run_dir, impl, str(int(mechanism))],
            capture_output=True, text=True, env=tuned_env(), check=True,
        )  # fmt: skip
        rows.append({"case": case, "run": Path(run_dir).name, **json.loads(child.stdout.strip().splitlines()[-1])})
    return rows


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        run_dir, impl, mechanism = sys.argv[2:5]
        print(json.dumps(evaluate_checkpoint(run_dir, impl, mechanism == "1")))
        return
    args = arguments(__doc__, "10,30", ["arms/em.yaml"], 1, checkpoint=True)
    rows = [
        {**row, "case": case}
        for arm in args.arms.split(",")
        for case, (phase, overrides) in CASES.items()
        for row in measure(SPEC, arm, args.depths, args.steps, ("sweep.seed=[0]", *overrides), phase)
    ]
    trained = checkpoint_rows(args.checkpoint) if args.checkpoint else []
    out = HERE / "results" / f"em-eval-cost-{args.tag}.json"
    write_json(out, {"machine": machine(), "environment": environment("cpu"), "spec": "specs/remedies/screening.yaml",
                     "steps": args.steps, "results": rows, "trained": trained})  # fmt: skip
    print("| arm | depth | case | batch | CPU s per batch | CPU ms per image | peak RSS GB | backend |")
    print("|---|--:|---|--:|--:|--:|--:|---|")
    for r in sorted(rows, key=lambda r: (r["arm"], r["depth"])):
        backend = ", ".join(sorted({str(b) for b in (r.get("routing_backend") or {}).values()}))
        print(f"| {r['arm']} | {r['depth']} | {r['case']} | {r['batch_size']} | {r['cpu_s_per_step']:.2f} | "
              f"{1000 * r['cpu_s_per_step'] / r['batch_size']:.1f} | {r['peak_rss_gb']:.2f} | {backend} |"
              + (f" {r['error']}" * bool(r["error"])))  # fmt: skip
    if trained:
        print(f"\nTrained: {trained[0]['run']}, epoch {trained[0]['epoch']}, {trained[0]['images']} validation images")
        print("| case | CPU s | CPU ms per image | accuracy | peak RSS GB |\n|---|--:|--:|--:|--:|")
        for r in trained:
            print(f"| {r['case']} | {r['cpu_s']:.2f} | {1000 * r['cpu_s'] / r['images']:.1f} | {r['accuracy']:.4f} | "
                  f"{r['peak_rss_gb']:.2f} |")  # fmt: skip
    print(f"written: {out}")


if __name__ == "__main__":
    main()
