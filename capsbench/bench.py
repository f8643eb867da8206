"""Step speed and peak memory of any spec: ``capsbench bench SPEC [key=value ...] [--steps N] [--phase eval]``.

Each run is measured in a fresh child process, so peak memory (CUDA max allocated,
or the process's peak RSS on CPU) belongs to that run and phase alone. One training step =
forward, loss, backward and optimiser step on one batch of the spec's real data
(batch size ``train.batch_size``), after warm-up steps. ``--phase eval`` measures one
evaluation batch instead, as the runner evaluates it (``train.loop.evaluate``: eval mode, no
autograd, the activation and mechanism hooks, batch ``train.eval_batch_size``): its batch is
usually several times the training one, so it can set a run's peak memory although it keeps no
graph. Prints one JSON object per run.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from omegaconf import OmegaConf

PHASES = ("train", "eval")


def measure(cfg, steps: int = 5, warmup: int = 1, phase: str = "train") -> dict:
    """Time ``steps`` training steps (or evaluation batches) of the model ``cfg`` describes."""
    import torch

    from capsbench.data import build_data
    from capsbench.metrics.system import process_peak_rss_mb
    from capsbench.train.loop import Trainer, evaluate
    from capsbench.train.optim import build_optimizer
    from capsbench.train.parts import build_model, build_run_loss
    from capsbench.train.runner import resolve_device, routing_backends, routing_implementations

    torch.manual_seed(cfg.seed)
    device = resolve_device(str(cfg.device))
    data = build_data(cfg.data)
    batch = int(cfg.train.eval_batch_size if phase == "eval" else cfg.train.batch_size)
    index = torch.arange(batch) % len(data.train)
    x = torch.stack([data.train[int(i)][0] for i in index]).to(device)
    y = torch.tensor([int(data.train[int(i)][1]) for i in index], device=device)
    model = build_model(cfg, data, device)
    _, loss_fn = build_run_loss(cfg, model)
    optimizer = build_optimizer(model.parameters(), cfg.train.optimizer)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(cfg.train.amp))
    if cfg.train.compile and phase == "train":  # the runner evaluates the eager model
        model = torch.compile(model)
    base_rss = process_peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(x)
            loss = loss_fn(out.float(), y, progress=0.5)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    trainer = Trainer(model, model, loss_fn, optimizer, device, amp_dtype=amp)

    def eval_step() -> float:
        result = evaluate(trainer, [(x, y)], progress=0.5, threshold=float(cfg.metrics.dead_threshold),
                          mechanism=bool(cfg.metrics.mechanism))  # fmt: skip
        return result.loss

    run_step = eval_step if phase == "eval" else step

    times, cpu_times, losses = [], [], []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        losses.append(run_step())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else process_peak_rss_mb()
    return {
        "phase": phase,
        "batch_size": batch,
        f"{phase}_step_ms": round(statistics.median(times) * 1000, 2),
        f"{phase}_step_ms_min": round(min(times) * 1000, 2),
        # CPU time of this process (all its threads): on a shared machine, what the step cost whatever the load
        f"{phase}_step_cpu_ms": round(statistics.median(cpu_times) * 1000, 2),
        "steps": steps,
        "peak_memory_mb": round(peak, 1),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss",
        "rss_before_steps_mb": round(base_rss, 1),
        "loss_finite": all(v == v and abs(v) != float("inf") for v in losses),
        "last_loss": losses[-1],
        "num_params": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "routing_impl": routing_implementations(model),  # the path each routed layer ran
        "routing_backend": routing_backends(model),  # and the code that ran it (torch, c-avx512, triton)
    }


def bench_spec(path: str, overrides: list[str], steps: int = 5, warmup: int = 1, phase: str = "train") -> list[dict]:
    """Measure every run of a spec, each in its own process; print and return one dict per run."""
    from capsbench import spec
    from capsbench.env import environment
    from capsbench.malloc import tuned_env

    results = []
    for run in spec.load(path, overrides):
        payload = json.dumps(
            {"config": OmegaConf.to_container(run.config), "steps": steps, "warmup": warmup, "phase": phase}
        )
        child = subprocess.run(
            [sys.executable, "-m", "capsbench.bench"],
            input=payload,
            capture_output=True,
            text=True,
            env={**tuned_env(), "PYTHONUNBUFFERED": "1"},
        )
        if child.returncode != 0:
            tail = (child.stderr.strip().splitlines() or ["no output"])[-1]
            result = {"error": tail}
        else:
            result = json.loads(child.stdout.strip().splitlines()[-1])
        result = {"spec": str(run.config.name), "point": run.point, "spec_hash": run.spec_hash, **result}
        result["environment"] = environment(result.get("device"))
        result["malloc_tuning"] = {k: v for k, v in tuned_env().items() if k.startswith("MALLOC_")}
        print(json.dumps(result, sort_keys=True), flush=True)
        results.append(result)
    return results


def _child() -> None:
    from capsbench.config import RunConfig

    payload = json.loads(sys.stdin.read())
    cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), payload["config"])
    print(json.dumps(measure(cfg, steps=payload["steps"], warmup=payload["warmup"], phase=payload["phase"])))


if __name__ == "__main__":
    _child()
