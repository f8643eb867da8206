"""Where a training step on the compiled CPU EM kernel spends its time (issue 14): one process, one thread.

    OMP_NUM_THREADS=1 python benchmarks/profile_cpu_em.py [--config paper-mini|32x32] [--depth 4] [--steps 2]

Runs the training step of ``run_fused_benchmark.py``'s configuration with ``model.routing_impl=fused``
(after one warm-up step) and splits its CPU time (``time.process_time``) into: the kernel's forward
calls, its backward calls (each recomputes its windows' forward), the torch glue around them (dtype
and layout conversions, the per-child weight, output allocation, the autograd function: the time inside
``em_routing_cpu`` and ``_EMWindows.backward`` that is not a kernel call) and the rest of the network.
Prints one JSON object (medians over the steps, CPU ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Clock:
    """Accumulated CPU seconds of the calls wrapped under one name."""

    def __init__(self):
        self.total: dict[str, float] = {}

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total[name] = self.total.get(name, 0.0) + time.process_time() - start

        return timed


def main() -> None:
    import torch
    from run_fused_benchmark import CONFIGS

    from capsbench import spec as spec_mod
    from capsbench.capsules.routing.native import build, cpu_em
    from capsbench.data import build_data
    from capsbench.train.optim import build_optimizer
    from capsbench.train.parts import build_model, build_run_loss

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="paper-mini", choices=["paper-mini", "32x32"])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    label = "paper-mini EM" if args.config == "paper-mini" else "32x32 routing EM"
    path, base = CONFIGS[label]
    base = [o for o in base if not o.startswith("sweep.model.depth")]
    (run,) = spec_mod.load(str(path), [*base, f"sweep.model.depth=[{args.depth}]", "model.routing_impl=fused"])
    cfg = run.config
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    data = build_data(cfg.data)
    batch = int(cfg.train.batch_size)
    x = torch.stack([data.train[i % len(data.train)][0] for i in range(batch)])
    y = torch.tensor([int(data.train[i % len(data.train)][1]) for i in range(batch)])
    model = build_model(cfg, data)
    _, loss_fn = build_run_loss(cfg, model)
    optimizer = build_optimizer(model.parameters(), cfg.train.optimizer)

    clock = Clock()
    kernel = build.load(torch.float32)
    build._loaded[torch.float32] = kernel._replace(
        forward=clock.wrap("kernel_forward", kernel.forward), backward=clock.wrap("kernel_backward", kernel.backward)
    )
    cpu_em.em_routing_cpu = clock.wrap("routing_call_forward", cpu_em.em_routing_cpu)
    cpu_em._EMWindows.backward = staticmethod(clock.wrap("routing_call_backward", cpu_em._EMWindows.backward))

    rows = []
    for i in range(1 + args.steps):
        clock.total.clear()
        start = time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x).float(), y, progress=0.5)
        loss.backward()
        optimizer.step()
        step = time.process_time() - start
        if i == 0:
            continue
        t = clock.total
        row = {
            "step": step,
            "kernel_forward": t.get("kernel_forward", 0.0),
            "kernel_backward": t.get("kernel_backward", 0.0),
            "glue_forward": t.get("routing_call_forward", 0.0) - t.get("kernel_forward", 0.0),
            "glue_backward": t.get("routing_call_backward", 0.0) - t.get("kernel_backward", 0.0),
        }
        row["rest_of_network"] = step - sum(v for k, v in row.items() if k != "step")
        rows.append(row)
    out = {k: round(statistics.median(r[k] for r in rows) * 1000, 1) for k in rows[0]}
    out.update(config=label, depth=args.depth, steps=args.steps, threads=torch.get_num_threads(), isa=kernel.isa)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
