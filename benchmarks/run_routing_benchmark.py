"""Run the routing benchmark and record it, with the machine it ran on.

    python benchmarks/run_routing_benchmark.py [--steps 3] [key=value ...]

Writes ``benchmarks/results/routing-<host kind>.json`` and a Markdown table next to it, comparing
with the public reference implementation's numbers measured on a 2-core CPU (see issue 3).
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

from capsbench.bench import bench_spec
from capsbench.io import write_json, write_text

HERE = Path(__file__).resolve().parent

# Reference implementation (SR-CapsNet's routing modules), this configuration, 2-core CPU:
# seconds per training step and peak memory in GB, as reported in issue 3.
REFERENCE_S = {("em", 1): 4.8, ("em", 5): 22.7, ("em", 10): 49.7, ("self", 1): 2.7, ("self", 5): 18.5,
               ("dynamic", 1): 11.0, ("dynamic", 5): 18.0}
REFERENCE_GB = {("em", 1): 3.4, ("em", 5): 11.6, ("dynamic", 5): 16.0, ("self", 10): 24.0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tag", default=None, help="file name tag (default: cpu or the GPU name)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    results = bench_spec(str(HERE / "routing.yaml"), args.overrides, steps=args.steps, warmup=1)
    device = results[0].get("device", "cpu") if results else "cpu"
    gpu = results[0]["environment"].get("gpu") if results else None
    tag = args.tag or (gpu.replace(" ", "_").lower() if gpu else f"cpu{results[0]['environment']['cpu_count']}")
    out = HERE / "results" / f"routing-{tag}.json"
    write_json(out, {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                 "device": device, "gpu": gpu}, "overrides": args.overrides, "results": results})
    rows = ["| routing | depth | step ms (median) | peak MB | loss finite | reference s | speed-up | reference GB |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        key = (r["point"]["model.routing"], r["point"]["model.depth"])
        ms = r.get("train_step_ms")
        ref = REFERENCE_S.get(key)
        speed = f"{ref * 1000 / ms:.1f}x" if ref and ms else "n/a"
        rows.append(f"| {key[0]} | {key[1]} | {ms if ms is not None else r.get('error')} | {r.get('peak_memory_mb')} "
                    f"| {r.get('loss_finite')} | {ref or 'n/a'} | {speed} | {REFERENCE_GB.get(key, 'n/a')} |")
    write_text(out.with_suffix(".md"), "\n".join(rows) + "\n")
    print("\n".join(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
