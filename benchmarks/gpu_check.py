"""The GPU check of issue 14: fused vs materialised routing, every method, one table (driver of gpu_check.sh).

    python benchmarks/gpu_check.py [--smoke] [--device cuda|cpu] [--out DIR] [--budget-s S]

Measures, in this process, one training step (forward, loss, backward, optimiser; median of
``--steps`` after a warm-up, ``capsbench.bench.measure``) and its peak memory (CUDA max allocated)
for every registered routing at depths 1, 5 and 10 of ``benchmarks/routing.yaml`` (batch 128,
32x32, 16 types of 4x4 poses, 3 iterations, checkpointing on), for ``model.routing_impl``
``reference`` and ``fused``, in fp32 and under bf16 autocast; then one training step of every
method's paper protocol (``specs/paper/figure1.yaml``, ``specs/dynamic_depth_sweep.yaml``) at
depth 10 without checkpointing. Every row records the implementation the layers report they
ran. A configuration that fails (no fused implementation, out of memory) is a row with its
error; configurations left when ``--budget-s`` runs out are rows marked skipped.

Writes under ``--out`` (default ``benchmarks/results/gpu-check-<device name>``): ``environment.json``,
``routing.json``, ``paper.json`` and ``table.md``, and prints the table. ``--smoke`` runs depth 1
at batch 16, fp32 only, one step (a minute or two, mostly compilation). ``--device cpu --smoke`` runs
the same logic at 16x16 and batch 2 so CI can check the driver without a GPU.

Where the spec key ``model.routing_impl`` does not exist yet, only the reference path is measured
and every row says so.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import sys
import time
from dataclasses import fields
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ROUTING_SPEC = HERE / "routing.yaml"
PAPER_SPECS = (REPO / "specs/paper/figure1.yaml", REPO / "specs/dynamic_depth_sweep.yaml")
NO_SWITCH = "model.routing_impl is not in this capsbench (issue 14's switch): reference path only"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--smoke", action="store_true", help="depth 1, small batch, fp32, one step")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 3, smoke 1)")
    parser.add_argument("--budget-s", type=float, default=390.0, help="stop measuring after this many seconds")
    return parser.parse_args(argv)


def switch_exists() -> bool:
    from capsbench.config import ModelConfig

    return "routing_impl" in {f.name for f in fields(ModelConfig)}


def plan(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """The configurations to measure: (routing benchmark rows, paper-protocol rows), as spec + overrides."""
    from capsbench.registry import ROUTINGS

    tiny = args.device == "cpu"
    depths = [1] if args.smoke else [1, 5, 10]
    batch = 2 if tiny else 16 if args.smoke else 128
    size = 16 if tiny else 32
    precisions = ["off"] if args.smoke else ["off", "bf16"]
    impls = ["reference", "fused"] if switch_exists() else ["reference"]
    # keep_coefficients=false on both paths: a layer that keeps its coefficients asks the fused path
    # for them, and the Triton kernel (which never forms them) then yields to the blockwise path
    common = [f"device={args.device}", f"data.image_size={size}", "model.options.keep_coefficients=false"]

    def switch(impl: str) -> list[str]:
        return [f"model.routing_impl={impl}"] if switch_exists() else []

    routing_rows = [
        {"spec": ROUTING_SPEC, "routing": routing, "depth": depth, "impl": impl, "amp": amp,
         "overrides": common + [f"model.routing={routing}", f"model.depth={depth}", f"train.batch_size={batch}",
                                f'train.amp="{amp}"'] + switch(impl)}
        for routing in ROUTINGS.names() for depth in depths for amp in precisions for impl in impls
    ]  # fmt: skip
    paper_depth = 1 if args.smoke else 10
    paper_rows = [
        {"spec": path, "depth": paper_depth, "impl": impl, "overrides": common + [
            "data.name=digits", f"model.depth={paper_depth}", "seed=0", "model.checkpointing=false",
            *([f"train.batch_size={batch}"] if args.smoke else [])] + switch(impl)}
        for path in PAPER_SPECS for impl in impls
    ]  # fmt: skip
    return routing_rows, paper_rows


def measure_row(spec_path: Path, overrides: list[str], steps: int) -> list[dict]:
    """Measure every run the spec gives with these overrides; a failure becomes a row with its error."""
    import torch

    from capsbench import spec
    from capsbench.bench import measure

    try:
        runs = spec.load(spec_path, overrides)
    except Exception as exc:  # a spec the switch rejects (no fused implementation) is a result too
        return [{"error": f"{type(exc).__name__}: {exc}"}]
    rows = []
    for run in runs:
        try:
            result = measure(run.config, steps=steps, warmup=1)
        except Exception as exc:  # out of memory, a kernel that does not compile: record and go on
            result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        rows.append({"routing": str(run.config.model.routing), "batch": int(run.config.train.batch_size), **result})
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def run_all(rows: list[dict], steps: int, deadline: float) -> list[dict]:
    results = []
    for row in rows:
        meta = {k: v for k, v in row.items() if k not in ("spec", "overrides")}
        if time.monotonic() > deadline:
            results.append({**meta, "skipped": "time budget"})
            continue
        for measured in measure_row(row["spec"], row["overrides"], steps):
            results.append({**meta, **measured, "overrides": row["overrides"]})
            print(json.dumps(results[-1], default=str), flush=True)
    return results


def implementation(row: dict) -> str:
    """What the layers said they ran (``measure``'s ``routing_impl``: a name, a list, or per layer)."""
    ran = row.get("routing_impl")
    if isinstance(ran, dict):
        ran = sorted(set(map(str, ran.values())))
    if isinstance(ran, (list, tuple, set)):
        ran = ",".join(sorted(set(map(str, ran))))
    return str(ran) if ran else "unreported"  # capsbench without the switch reports nothing


def cell(row: dict | None) -> str:
    if row is None:
        return "-"
    if "skipped" in row:
        return "skipped"
    if "error" in row:
        return "n/a" if "fused" in row["error"] else "error"
    ran = implementation(row)
    return f"{row['train_step_ms']:.1f} ms, {row['peak_memory_mb'] / 1024:.2f} GB ({ran})"


def table(routing_rows: list[dict], paper_rows: list[dict], switch: bool) -> str:
    """Markdown: one line per (routing, depth), columns reference/fused x fp32/bf16; then the paper steps."""
    index = {(r["routing"], r["depth"], r["impl"], r["amp"]): r for r in routing_rows}
    columns = [(impl, amp) for amp in ("off", "bf16") for impl in ("reference", "fused")]
    head = " | ".join(f"{impl} {'fp32' if amp == 'off' else amp}" for impl, amp in columns)
    lines = [f"| routing | depth | {head} | fused speed-up fp32 |", "|---|---|" + "---|" * (len(columns) + 1)]
    for routing, depth in dict.fromkeys((r["routing"], r["depth"]) for r in routing_rows):
        cells = [cell(index.get((routing, depth, impl, amp))) for impl, amp in columns]
        ref, fused = index.get((routing, depth, "reference", "off")), index.get((routing, depth, "fused", "off"))
        ok = all(r is not None and "train_step_ms" in r for r in (ref, fused))
        speed = f"{ref['train_step_ms'] / fused['train_step_ms']:.1f}x" if ok else "-"
        lines.append(f"| {routing} | {depth} | " + " | ".join(cells) + f" | {speed} |")
    if not switch:
        lines.append(f"\n{NO_SWITCH}.")
    lines += ["", "| paper protocol, no checkpointing | impl | depth | batch | step ms | peak GB | layers ran |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in paper_rows:
        head = f"| {r.get('routing', '?')} | {r.get('impl', '-')} | {r['depth']} |"
        if "train_step_ms" in r:
            lines.append(f"{head} {r['batch']} | {r['train_step_ms']:.1f} | {r['peak_memory_mb'] / 1024:.2f} | "
                         f"{implementation(r)} |")  # fmt: skip
        else:
            error = r.get("error") or r.get("skipped")
            lines.append(f"{head} - | {'n/a' if 'no fused implementation' in error else error} | | |")
    lines.append(
        "\nfused = the Triton kernel for EM's convolutional capsule layers on CUDA (parents normalisation); "
        "the blockwise path of routing/fused.py for class capsules and VB; n/a = no fused implementation."
    )
    return "\n".join(lines) + "\n"


def layer_inputs(windows: int, children: int, parents: int, device: str):
    """Random child poses, activations, weights (EM's init scale) and betas of one EM layer call."""
    import torch

    g = torch.Generator().manual_seed(0)
    tensors = (
        torch.randn(windows, children, 16, generator=g),
        torch.rand(windows, children, generator=g),
        torch.randn(children, parents, 4, 4, generator=g) * 0.05,
        torch.zeros(parents),
        torch.zeros(parents),
    )
    return [t.to(device).requires_grad_() for t in tensors]


def layer_step(impl: str, inputs: list, routing) -> None:
    """Forward and backward of one EM routing call over ``P`` windows: materialised votes or fused."""
    import torch

    from capsbench.capsules.routing.kernels.triton_em import em_routing_triton

    pose, act, weight, beta_u, beta_a = inputs
    if impl == "fused":
        out_pose, out_act = em_routing_triton(
            pose, act, weight, beta_u, beta_a, lambdas=routing.lambdas, min_var=routing.min_var, cost=routing.cost
        )
    else:  # VoteTransform's maths, then EMRouting.forward on the [1, P, I, J, 16] votes
        windows, children, parents = pose.shape[0], pose.shape[1], weight.shape[1]
        votes = torch.einsum("pirk,ijkc->pijrc", pose.view(windows, children, 4, 4), weight)
        out = routing(votes.reshape(1, windows, children, parents, 16), act[None], pose[None])
        out_pose, out_act = out.pose, out.activation
    (out_pose.sum() + out_act.sum()).backward()


def measure_layer(impl: str, windows: int, device: str, steps: int) -> dict:
    """Median forward+backward ms and peak memory of one 3x3x16 -> 16 EM layer call (I = 144, J = 16)."""
    import statistics

    import torch

    from capsbench.capsules.routing.em import EMRouting

    routing = EMRouting(144, 16, 16, iterations=3).to(device)
    inputs = layer_inputs(windows, 144, 16, device)
    cuda = device == "cuda"
    times = []
    try:
        for i in range(steps + 2):  # two warm-ups: Triton compiles on the first call
            if cuda:
                torch.cuda.synchronize()
                if i == 2:
                    torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            layer_step(impl, inputs, routing)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    except Exception as exc:  # no CUDA for the fused path, out of memory
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return {"fwd_bwd_ms": round(statistics.median(times[2:]) * 1000, 3), "peak_memory_mb": peak}


# Tile configurations of the fused kernels timed on the largest layer (the first is what ships):
# (BLOCK_P, BLOCK_I, CHILD_BLOCK_I, NUM_WARPS, CHILD_NUM_WARPS) of capsbench/.../triton_em.py. Chosen
# without a GPU from ptxas's register counts; the sweep says which is fastest on the GPU at hand.
TILE_KNOBS = ("BLOCK_P", "BLOCK_I", "CHILD_BLOCK_I", "NUM_WARPS", "CHILD_NUM_WARPS")
TILE_SWEEP = [(2, 2, 2, 4, 4), (4, 2, 4, 8, 8), (1, 2, 8, 4, 8), (2, 4, 2, 8, 4)]  # none spills on sm_90


@contextlib.contextmanager
def tiles(config: tuple[int, ...]):
    """Run the fused kernels with another tile configuration, then restore the shipped one."""
    from capsbench.capsules.routing.kernels import triton_em

    saved = {k: getattr(triton_em, k) for k in TILE_KNOBS}
    try:
        for knob, value in zip(TILE_KNOBS, config):
            setattr(triton_em, knob, value)
        yield
    finally:
        for knob, value in saved.items():
            setattr(triton_em, knob, value)


def run_layers(args: argparse.Namespace, steps: int, deadline: float) -> list[dict]:
    """The EM layer alone, fused vs materialised, at the window counts of the two benchmark models."""
    from capsbench.capsules.routing.kernels import triton_em

    # batch 128: routing.yaml leaves a 4x4 capsule grid (2,048 windows), the paper's EM stem 16x16 (32,768)
    counts = [8] if args.device == "cpu" else [2048] if args.smoke else [2048, 32768]
    rows = []
    for windows in counts:
        sweep = TILE_SWEEP if windows == counts[-1] and not args.smoke else TILE_SWEEP[:1]
        for impl, config in [("reference", None)] + [("fused", config) for config in sweep]:
            row = {"windows": windows, "impl": impl, "tiles": config}
            if time.monotonic() > deadline:
                rows.append({**row, "skipped": "time budget"})
                continue
            if impl == "fused" and not triton_em.available(args.device):
                rows.append({**row, "error": f"fused EM kernels unavailable on {args.device} (triton_em.available)"})
                break
            with tiles(config or TILE_SWEEP[0]):
                rows.append({**row, **measure_layer(impl, windows, args.device, steps + 2)})
            print(json.dumps(rows[-1]), flush=True)
            gc.collect()
    return rows


# H200 (and H100 SXM) peaks for the floors: HBM3e ~4.8 TB/s (4.3 measured here by a device-to-device
# copy), fp32 CUDA-core arithmetic ~67 TFLOP/s (an FMA counts 2). Floors on another GPU scale with these.
HBM_BYTES_PER_S = 4.8e12
FP32_FLOP_PER_S = 67e12


def em_layer_model(children: int = 144, parents: int = 16, iterations: int = 3) -> dict[str, float]:
    """What one window must move (HBM bytes) and compute (flops) per forward+backward, on each path.

    ``e = I * J * 16`` vote entries. Fused (triton_em): every pass recomputes the votes (4 FMA =
    8 flops per entry); forward = centre pass + T M-step passes (6 flops/entry) + T-1 E-steps
    (4) = e (18 T + 6); backward = T-1 reverse passes (~26 e each) + one children pass
    (votes, T x ~10 e, T-1 x ~8 e for the E-steps, 16 e for the pose and weight gradients).
    Bytes: child poses and activations read by each of the three programs, the per-window
    statistics and their gradients written and read back, outputs and input gradients; the
    weights stay in L2. Reference (materialised votes): about 15 vote-sized fp32 tensors read or
    written in the forward and 50 in the backward (benchmarks/README.md, the CPU analysis of the
    same kernels); its arithmetic is a few flops per byte, so bandwidth is its floor.
    """
    t, e = iterations, children * parents * 16
    child_bytes = children * 17 * 4  # pose (16) + activation, fp32
    stats_bytes = t * parents * 34 * 4  # mean, raw variance, mass, logit per iteration
    grad_stats_bytes = t * parents * 33 * 4  # g_S1, g_S2, g_mass per iteration
    fused_bytes = 3 * child_bytes + 3 * stats_bytes + 2 * grad_stats_bytes + child_bytes + parents * 17 * 4 * 3
    fused_flops = e * (18 * t + 6) + 26 * e * (t - 1) + e * (9 + 10 * t + 8 * (t - 1) + 16)
    return {"fused_bytes": fused_bytes, "fused_flops": fused_flops, "reference_bytes": 65 * e * 4}


def floor_ms(impl: str, windows: int) -> float:
    model = em_layer_model()
    if impl == "fused":
        seconds = max(model["fused_bytes"] / HBM_BYTES_PER_S, model["fused_flops"] / FP32_FLOP_PER_S)
    else:
        seconds = model["reference_bytes"] / HBM_BYTES_PER_S
    return seconds * windows * 1000


def layer_table(rows: list[dict]) -> str:
    """The EM layer alone, with each path's floor from em_layer_model at the H200's peaks."""
    model = em_layer_model()
    lines = [
        "| EM layer, 144 children -> 16 parents, 3 iterations, fwd+bwd | windows | ms | floor ms | x floor "
        "| peak GB | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    ref = {r["windows"]: r.get("fwd_bwd_ms") for r in rows if r["impl"] == "reference"}
    for r in rows:
        ms, floor = r.get("fwd_bwd_ms"), floor_ms(r["impl"], r["windows"])
        peak = f"{r['peak_memory_mb'] / 1024:.2f}" if r.get("peak_memory_mb") is not None else "-"
        speed = f"{ref[r['windows']] / ms:.1f}x" if ms and ref.get(r["windows"]) and r["impl"] == "fused" else ""
        what = ms if ms is not None else r.get("error") or r.get("skipped")
        ratio = f"{ms / floor:.1f}" if ms else "-"
        label = r["impl"] + (f" tiles {'/'.join(map(str, r['tiles']))}" if r.get("tiles") else "")
        lines.append(f"| {label} | {r['windows']} | {what} | {floor:.3f} | {ratio} | {peak} | {speed} |")
    lines.append(
        f"\nPer window: fused {model['fused_bytes'] / 1e3:.0f} KB and {model['fused_flops'] / 1e6:.1f} MFLOP "
        f"(compute-bound), reference {model['reference_bytes'] / 1e6:.1f} MB (bandwidth-bound); floors at "
        f"{HBM_BYTES_PER_S / 1e12:.1f} TB/s and {FP32_FLOP_PER_S / 1e12:.0f} TFLOP/s fp32 (an H200). "
        f"Tiles: {'/'.join(TILE_KNOBS)} of triton_em (the first configuration ships)."
    )
    return "\n".join(lines) + "\n"


def environment_info(device: str) -> dict:
    import torch

    from capsbench.capsules.routing.kernels import triton_em

    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "device": device,
        "fused_em_available": triton_em.available(device),
        "routing_impl_switch": switch_exists(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["capability"] = list(torch.cuda.get_device_capability(0))
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        info["multiprocessors"] = props.multi_processor_count
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (use --device cpu to check the driver itself)", file=sys.stderr)
        return 2
    env = environment_info(args.device)
    name = env.get("gpu", "cpu").replace(" ", "_").lower()
    out = args.out or HERE / "results" / f"gpu-check-{name}{'-smoke' if args.smoke else ''}"
    out.mkdir(parents=True, exist_ok=True)
    steps = args.steps or (1 if args.smoke else 3)
    if not env["routing_impl_switch"]:
        print(f"gpu_check: {NO_SWITCH}", flush=True)
    start = time.monotonic()
    deadline = start + args.budget_s
    routing_plan, paper_plan = plan(args)
    # first the few rows that must not be squeezed out by the grid: the layer alone, the paper steps
    layers = run_layers(args, steps, deadline)
    paper = run_all(paper_plan, steps, deadline)
    routing = run_all(routing_plan, steps, deadline)
    env["wall_s"] = round(time.monotonic() - start, 1)
    (out / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
    (out / "routing.json").write_text(json.dumps(routing, indent=1, default=str) + "\n")
    (out / "paper.json").write_text(json.dumps(paper, indent=1, default=str) + "\n")
    (out / "layer.json").write_text(json.dumps(layers, indent=1) + "\n")
    text = layer_table(layers) + "\n" + table(routing, paper, env["routing_impl_switch"])
    (out / "table.md").write_text(f"{json.dumps(env)}\n\n{text}")
    print(text)
    print(f"gpu_check: wrote {out} in {env['wall_s']} s")
    failed = [r for r in routing + paper if "error" in r and "fused" not in r["error"]]
    failed += [r for r in layers if "error" in r and (args.device == "cuda" or r["impl"] == "reference")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
