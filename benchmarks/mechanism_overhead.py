"""Cost per training image under the long-cpu protocol, and the mechanism telemetry's overhead per step.

    OMP_NUM_THREADS=1 python benchmarks/mechanism_overhead.py [--depths 1,6,10] [--routings em,vb,...] [--tag TAG]

The telemetry runs on validation batches only, so its cost per training step is the extra time of one
validation epoch with it on, spread over the epoch's training steps. For each routing (the long-cpu
protocol's model: specs/long/confirmation.yaml, digits 8x8, batch 32) this measures the median training
step, and the median validation epoch with the telemetry off and on (interleaved, ``--repeats`` each),
and writes ``results/mechanism-overhead-<tag>.json`` with the machine. Target: < 10% of a step.

Times are CPU seconds of this (single-threaded) process (``time.process_time``), so a machine shared
with other jobs inflates them far less than wall-clock time; on an idle machine the two agree.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from capsbench import spec
from capsbench.data import build_data
from capsbench.env import environment
from capsbench.io import write_json
from capsbench.train.loop import Trainer, _step, evaluate
from capsbench.train.optim import build_optimizer
from capsbench.train.parts import build_model, build_run_loss

HERE = Path(__file__).resolve().parent
SPEC = HERE.parent / "specs" / "long" / "confirmation.yaml"


def measure(cfg, steps: int, repeats: int) -> dict:
    torch.manual_seed(0)
    data = build_data(cfg.data)
    model = build_model(cfg, data)
    _, loss_fn = build_run_loss(cfg, model)
    t = Trainer(model, model, loss_fn, build_optimizer(model.parameters(), cfg.train.optimizer), torch.device("cpu"))
    train = DataLoader(data.train, batch_size=cfg.train.batch_size, shuffle=False)
    val = DataLoader(data.val, batch_size=cfg.train.eval_batch_size)
    model.train()
    times = []
    for i, (x, y) in enumerate(train):
        if i > steps:
            break
        start = time.process_time()
        _step(t, x, y, 0.0)
        if i > 0:  # the first step warms up
            times.append(time.process_time() - start)
    off, on = [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        for flag, into in ((False, off), (True, on)):
            start = time.process_time()
            evaluate(t, val, progress=0.0, mechanism=flag)
            into.append(time.process_time() - start)
    step_s = statistics.median(times)
    steps_per_epoch = math.ceil(len(data.train) / cfg.train.batch_size)
    extra = max(statistics.median(on) - statistics.median(off), 0.0)
    return {
        "routing": cfg.model.routing,
        "depth": cfg.model.depth,
        "train_step_cpu_ms": 1000 * step_s,
        "train_ms_per_image": 1000 * step_s / cfg.train.batch_size,
        "val_epoch_cpu_ms_off": 1000 * statistics.median(off),
        "val_epoch_cpu_ms_on": 1000 * statistics.median(on),
        "steps_per_epoch": steps_per_epoch,
        "overhead_per_step_fraction": extra / steps_per_epoch / step_s,
        "val_epoch_overhead_fraction": extra / statistics.median(off),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--depths", default="1,6,10")
    parser.add_argument("--routings", default="em,vb,self,dynamic,uniform")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tag", default=None)
    args = parser.parse_args()
    routings = args.routings.split(",")
    depths = [int(d) for d in args.depths.split(",")]
    overrides = [f"sweep.model.depth=[{','.join(map(str, depths))}]", "sweep.seed=[0]"]
    rows = []
    for run in spec.load(str(SPEC), overrides):
        if run.config.model.routing in routings:
            row = measure(run.config, args.steps, args.repeats)
            print(row, flush=True)
            rows.append(row)
    tag = args.tag or f"cpu{torch.get_num_threads()}thread"
    out = HERE / "results" / f"mechanism-overhead-{tag}.json"
    machine = {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(),
               "load_average": os.getloadavg(), "cpu_count": os.cpu_count()}
    write_json(out, {"machine": machine, "environment": environment("cpu"), "spec": SPEC.name, "results": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
