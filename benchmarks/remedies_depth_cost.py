"""Cost of one training step at depths past 10 under the long-cpu protocol: per routing, plain and remedied.

    OMP_NUM_THREADS=1 python benchmarks/remedies_depth_cost.py [--depths 20,30] [--arms A,B] [--steps 1] [--tag TAG]
        [--spec specs/remedies/baselines.yaml] [--phases train,eval]

For each arm of ``specs/remedies/screening.yaml`` named in ``--arms`` (default: every routing's plain preset
and its heaviest remedy, pre-activation skips with LayerNorm) and each depth, ``capsbench bench`` runs one
warm-up step and ``--steps`` measured training steps (forward, loss, backward, SGD; digits 8x8, batch 32) in a
fresh process, and reports the step's CPU time (``time.process_time`` of that single-threaded process, robust
to a shared machine's load), its wall time and the process's peak RSS. The projected CPU hours of one
30-epoch run are ``1.10 x 30 x 41 x step CPU s``: 41 training steps per epoch, and 1.10 for the validation
epoch, the BatchNorm pass and the test (the ratio of the measured run hours to the training steps at depth 10 in
docs/long-protocol.md). ``--phases train,eval`` also measures one evaluation batch (``capsbench bench --phase
eval``: batch ``train.eval_batch_size``, no autograd, the runner's hooks) in its own process, so its peak RSS
sits beside the training step's. Writes ``results/remedies-depth-cost-<tag>.json`` (with the machine) and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

from capsbench.bench import bench_spec
from capsbench.env import environment
from capsbench.io import write_json

HERE = Path(__file__).resolve().parent
SPEC = HERE.parent / "specs" / "remedies" / "screening.yaml"
PLAIN = {"self": "../protocols/methods/self.yaml", "dynamic": "../protocols/methods/dynamic.yaml",
         "vb": "arms/vb.yaml", "em": "arms/em.yaml"}
DEFAULT_ARMS = [arm for routing, plain in PLAIN.items() for arm in (plain, f"arms/{routing}_pre_ln.yaml")]
STEPS_PER_RUN = 30 * 41  # long-cpu: 30 epochs of 41 steps
RUN_OVERHEAD = 1.10  # validation, BatchNorm pass and test on top of the training steps (docs/long-protocol.md)


def measure(spec: Path, arm: str, depths: str, steps: int, overrides: tuple[str, ...] = (),
            phase: str = "train") -> list[dict]:  # fmt: skip
    """One row per depth: ``capsbench bench`` of one ``sweep.extends`` arm of ``spec`` (one warm-up step)."""
    rows = []
    sweep = [f"sweep.extends=[{arm}]", f"sweep.model.depth=[{depths}]", *overrides]
    for result in bench_spec(str(spec), sweep, steps=steps, warmup=1, phase=phase):
        cpu_s = result.get(f"{phase}_step_cpu_ms", float("nan")) / 1000
        rows.append({"arm": arm, "depth": result["point"].get("model.depth"), "phase": phase,
                     "batch_size": result.get("batch_size"), "cpu_s_per_step": cpu_s,
                     "wall_s_per_step": result.get(f"{phase}_step_ms", float("nan")) / 1000,
                     "peak_rss_gb": result.get("peak_memory_mb", float("nan")) / 1024,
                     "rss_before_steps_gb": result.get("rss_before_steps_mb", float("nan")) / 1024,
                     # an evaluation batch is not a training step: no projection from it
                     "projected_cpu_h_per_run": RUN_OVERHEAD * STEPS_PER_RUN * cpu_s / 3600 if phase == "train"
                     else None,
                     "loss_finite": result.get("loss_finite"), "routing_impl": result.get("routing_impl"),
                     "routing_backend": result.get("routing_backend"),
                     "error": result.get("error"), "spec_hash": result["spec_hash"]})  # fmt: skip
    return rows


def machine() -> dict:
    """The machine a result file records (with its load: a shared machine's wall times vary)."""
    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip


def arguments(
    doc: str, depths: str, arms: list[str], steps: int, phases: bool = False, checkpoint: bool = False
) -> argparse.Namespace:
    """--depths, --arms (sweep.extends entries of the screening spec), --steps and --tag, with these defaults;
    --phases where the caller measures evaluation batches too, --checkpoint where it evaluates a trained run."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--depths", default=depths)
    parser.add_argument("--arms", default=",".join(arms), help="sweep.extends entries of the screening spec")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--tag", default="cpu1thread")
    if phases:
        parser.add_argument("--phases", default="train", help="train, eval or train,eval (capsbench bench --phase)")
    if checkpoint:
        parser.add_argument("--checkpoint", metavar="RUN_DIR", help="a run folder with checkpoint.pt to evaluate")
    parser.add_argument("--spec", type=Path, default=SPEC,
                        help="the sweep spec whose sweep.extends entries --arms names (default: the screening)")
    return parser.parse_args()


def spec_name(spec: Path) -> str:
    """The spec as a path from the repository root where it lies inside it (results files name no machine)."""
    spec = spec.resolve()
    return str(spec.relative_to(HERE.parent)) if spec.is_relative_to(HERE.parent) else spec.name


def main() -> None:
    args = arguments(__doc__, "20,30", DEFAULT_ARMS, 1, phases=True)
    # one seed: a spec that sweeps seeds (the baselines) would otherwise bench every seed's identical step
    rows = [row for arm in args.arms.split(",") for phase in args.phases.split(",")
            for row in measure(args.spec, arm, args.depths, args.steps, ("sweep.seed=[0]",), phase)]  # fmt: skip
    out = HERE / "results" / f"remedies-depth-cost-{args.tag}.json"
    write_json(out, {"machine": machine(), "environment": environment("cpu"), "spec": spec_name(args.spec),
                     "steps": args.steps, "results": rows})  # fmt: skip
    print("| arm | depth | phase (batch) | CPU s / step | wall s / step | peak RSS GB | CPU h per 30-epoch run |")
    print("|---|--:|---|--:|--:|--:|--:|")
    for r in rows:
        hours = "" if r["projected_cpu_h_per_run"] is None else f"{r['projected_cpu_h_per_run']:.2f}"
        error = f" {r['error']}" if r["error"] else ""
        print(f"| {r['arm']} | {r['depth']} | {r['phase']} ({r['batch_size']}) | {r['cpu_s_per_step']:.2f} | "
              f"{r['wall_s_per_step']:.2f} | {r['peak_rss_gb']:.2f} | {hours} |{error}")  # fmt: skip
    print(f"written: {out}")


if __name__ == "__main__":
    main()
