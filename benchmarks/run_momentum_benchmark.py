"""Peak memory and step time of momentum residual blocks vs plain stacking vs checkpointing; recorded.

    OMP_NUM_THREADS=1 python benchmarks/run_momentum_benchmark.py [--steps 3] [--tag TAG] [key=value ...]

Runs ``benchmarks/momentum.yaml`` (self and dynamic routing, depths 10, 20, 30, long-cpu sizes) three
times through ``capsbench bench`` (one process per configuration, so the peak is that run's own):
plain stacking, ``model.checkpointing=true`` and ``model.momentum_residual=0.9``. Writes
``benchmarks/results/momentum-<tag>.json`` (with the machine) and a Markdown table next to it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
from pathlib import Path

from capsbench.bench import bench_spec
from capsbench.io import write_json, write_text

HERE = Path(__file__).resolve().parent
MODES = {
    "plain": ["model.checkpointing=false"],
    "checkpointing": ["model.checkpointing=true"],
    "momentum 0.9": ["model.checkpointing=false", "model.momentum_residual=0.9"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tag", default=None, help="file name tag (default: cpu<cores>)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    results = []
    for mode, overrides in MODES.items():
        spec_overrides = [*overrides, *args.overrides]
        # in a child process: a parent that imported torch and built models would pass its resident size on
        # to every `capsbench bench` child (Linux carries the peak RSS across fork and exec)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            saved = pool.apply(saved_for_backward_mb, (str(HERE / "momentum.yaml"), spec_overrides))
        for result in bench_spec(str(HERE / "momentum.yaml"), spec_overrides, steps=args.steps):
            results.append({"mode": mode, "saved_for_backward_mb": saved[result["spec_hash"]], **result})
    tag = args.tag or f"cpu{results[0]['environment']['cpu_count']}"
    out = HERE / "results" / f"momentum-{tag}.json"
    machine = {"platform": platform.platform(), "processor": platform.processor(), "device": "cpu"}
    write_json(out, {"machine": machine, "steps": args.steps, "overrides": args.overrides, "results": results})
    write_text(out.with_suffix(".md"), table(results))
    print(table(results))
    print(f"wrote {out}")


def saved_for_backward_mb(path: str, overrides: list[str]) -> dict[str, float]:
    """MiB that autograd keeps for the backward over one training forward, per run (by spec hash).

    The activation memory itself, free of what the process peak also holds (weights, gradients,
    optimiser state, the allocator's caching): tensors sharing a storage count once, the weights
    (held anyway) not at all. Under checkpointing it misses the input each checkpointed layer keeps
    (its own saved-tensor hooks take over inside the region): one capsule grid per layer.
    """
    import torch

    from capsbench import spec
    from capsbench.data import build_data
    from capsbench.registry import MODELS

    out = {}
    for run in spec.load(path, overrides):
        cfg = run.config
        torch.manual_seed(cfg.seed)
        data = build_data(cfg.data)
        x = torch.stack([data.train[i][0] for i in range(int(cfg.train.batch_size))])
        model = MODELS.get(cfg.model.arch)(
            cfg.model, num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size
        ).train()
        storages: dict[int, int] = {}
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # held anyway: not counted

        def pack(t, storages=storages, weights=weights):
            if t.untyped_storage().data_ptr() not in weights:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
        out[run.spec_hash] = round(sum(storages.values()) / 2**20, 1)
    return out


def table(results: list[dict]) -> str:
    """One row per routing and depth: step time and peak RSS of each mode."""
    cells: dict[tuple[str, int], dict[str, str]] = {}
    for r in results:
        key = (Path(r["point"]["extends"]).stem, r["point"]["model.depth"])  # the method preset names the routing
        text = r.get("error") or (
            f"{r['train_step_cpu_ms'] / 1000:.2f} s, {r['peak_memory_mb']:.0f} MB, {r['saved_for_backward_mb']:.0f} MB"
        )
        cells.setdefault(key, {})[r["mode"]] = text
    rows = [
        "Each cell: CPU seconds per training step (median), process peak RSS, MiB autograd saved for the backward.",
        "",
        "| routing | depth | " + " | ".join(MODES) + " |",
        "|---|---|" + "---|" * len(MODES),
    ]
    for (routing, depth), by_mode in cells.items():
        rows.append(f"| {routing} | {depth} | " + " | ".join(by_mode.get(m, "n/a") for m in MODES) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
