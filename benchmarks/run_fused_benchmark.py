"""Reference vs fused routing, side by side in one run, with a bytes-and-flops model of each path.

    OMP_NUM_THREADS=1 python benchmarks/run_fused_benchmark.py [--steps 2] [--quick] [--only EM]
        [--depths 4,5,10] [--variants reference,fused-torch,fused-compiled]

Configurations (one training step each, every variant in its own process, one thread):
- paper-mini EM (``specs/mini/depth_sweep.yaml``: 12x12 input, 6x6 capsule grid, batch 32, 2
  iterations, checkpointing on as in the protocol) at depths 4 and 10. The data set is scikit-learn
  digits at 12x12 (same shape as MNIST there; only shapes matter for timing), so it runs anywhere.
- the 32x32 routing benchmark (``benchmarks/routing.yaml``: batch 64, 3 iterations) EM at depths 5 and 10.
- paper-mini VB (4x4 capsule grid, 3 iterations) at depths 4 and 10, and the 32x32 routing benchmark's VB
  at depth 5, in VB's default configuration (normalised over every receiving parent).
Variants: ``reference`` (today's path: votes materialised, checkpointing as the spec sets it),
``reference-nockpt`` (the same without checkpointing: faster, more memory) and ``fused``
(``model.routing_impl=fused``; the fused path never checkpoints, it recomputes by itself), on the CPU
either as ``fused-torch`` (the PyTorch blockwise path) or ``fused-compiled`` (the compiled kernels,
``routing/native``: EM per window, VB one pass over the windows per iteration). Variants
run interleaved: every variant of one depth before the next depth, so a change in the machine's
load hits all paths alike.

The model: per routed window (I children, J parents, D = 16, T iterations, S = I*J*D*4 bytes of
votes) it counts the floating-point work each path must do and the bytes it must move to and from
memory, and turns them into a floor with this machine's measured one-thread GEMM rate and copy
bandwidth (probed at the start). Writes ``benchmarks/results/fused-<tag>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from capsbench.bench import bench_spec
from capsbench.io import write_json, write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CONFIGS = {
    "paper-mini EM": (
        ROOT / "specs/mini/depth_sweep.yaml",
        [
            "sweep.extends=[../protocols/methods/em.yaml]",
            "sweep.data.name=[digits]",
            "sweep.model.depth=[4,10]",
            "data.subset=null",
            "data.test_subset=null",
        ],
    ),
    "32x32 routing EM": (HERE / "routing.yaml", ["sweep.model.routing=[em]", "sweep.model.depth=[5,10]"]),
    "paper-mini VB": (
        ROOT / "specs/mini/depth_sweep.yaml",
        [
            "sweep.extends=[../protocols/methods/vb.yaml]",
            "sweep.data.name=[digits]",
            "sweep.model.depth=[4,10]",
            "data.subset=null",
            "data.test_subset=null",
        ],
    ),
    "32x32 routing VB": (HERE / "routing.yaml", ["sweep.model.routing=[vb]", "sweep.model.depth=[5]"]),
}
VARIANTS = {  # variant -> (overrides, environment)
    "reference": (["model.routing_impl=reference"], {}),
    "reference-nockpt": (["model.routing_impl=reference", "model.checkpointing=false"], {}),
    # the PyTorch blockwise fused path (routing/fused.py) and the compiled per-window kernel (routing/native)
    "fused-torch": (["model.routing_impl=fused"], {"CAPSBENCH_CPU_EM_KERNEL": "0", "CAPSBENCH_CPU_VB_KERNEL": "0"}),
    "fused-compiled": (["model.routing_impl=fused"], {"CAPSBENCH_CPU_EM_KERNEL": "1", "CAPSBENCH_CPU_VB_KERNEL": "1"}),
}
DEFAULT_VARIANTS = "reference,fused-torch,fused-compiled"


def probe_machine() -> dict:
    """One thread's GEMM rate (GFLOP/s) and copy bandwidth (GB/s, read + write) on this machine, now."""
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    a @ b
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    gflops = 2 * 512**3 * reps / (time.perf_counter() - start) / 1e9
    src = torch.randn(32 * 2**20)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    gbs = 2 * src.numel() * 4 * 5 / (time.perf_counter() - start) / 1e9
    return {"gemm_gflops_1thread": round(gflops, 1), "copy_gbs_1thread": round(gbs, 1)}


def routed_windows(spec: Path, overrides: list[str]) -> list[list[tuple[int, int, int, int]]]:
    """Per run of the spec: every routed layer's (N*L windows, I children, J parents, T iterations)."""
    import torch

    from capsbench import spec as spec_mod
    from capsbench.registry import MODELS

    found = []
    for run in spec_mod.load(str(spec), overrides):
        cfg = run.config
        size = cfg.data.image_size or 8
        model = MODELS.get(cfg.model.arch)(cfg.model, num_classes=10, in_channels=1, image_size=size)
        seen = []
        for layer in model.modules():
            if hasattr(layer, "last_coefficients"):
                layer.register_forward_hook(lambda m, i, o, seen=seen: seen.append(m.last_coefficients.shape))
        with torch.no_grad():
            model.eval()(torch.randn(1, 1, size, size))
        batch = int(cfg.train.batch_size)
        found.append([(batch * s[1], s[2], s[3], int(cfg.model.iterations)) for s in seen])
    return found


def path_model(windows, path: str, checkpointing: bool, coupled: bool = False) -> dict:
    """Flops and DRAM bytes of one training step's routing (all routed layers), for one path.

    Flops per window: the votes (reference: the block-diagonal 16 x 16J map, 2*I*16*16J; fused: the
    4x4 products, 2*I*J*64), and per iteration the two contractions over children (2 x 2*I*J*2D) plus
    ~4*I*J*D elementwise; a backward costs twice its forward. The reference path does one forward (two
    with checkpointing) and one backward; the fused path one forward, one recompute and one backward.
    Bytes per window: the reference streams the votes through memory, ~(3 + 4T) S in the forward
    (votes written and read, the centred votes and their squares, 2S, written once and read by each
    M- and E-step) and ~3.3x that in the backward (README of benchmarks/ counts 15 S + 50 S at T = 3).
    The fused path keeps each block in cache: it moves the child poses (I*D*4, read three times), the
    per-child weights once per block (negligible) and the outputs. ``coupled`` (VB, normalised over
    receiving parents): every contraction over children (the centre, T M-steps, T-1 E-steps) is its
    own pass that recomputes the votes, and the coefficients (I*J*4 bytes) go to memory and back
    around each one. ``fused-compiled`` (the CPU EM kernel): its forward keeps each window's
    coefficients and statistics (written once, read once), so its backward recomputes only the votes.
    ``fused-compiled`` with ``coupled`` (VB's kernel, ``routing/native/vb_window.c``): one pass
    over the windows per iteration, each recomputing the votes (2*I*J*64) and summing the moments
    (~5*I*J*D), all but the last pass adding the E-step (~4*I*J*D); the first pass also the centre
    (2*I*J*D). Each pass's backward recomputes the pass, goes back through the E-step (~7*I*J*D) and
    the M-step (~12*I*J*D) and through the votes (2 x 2*I*J*64). Its memory traffic is the child
    poses (I*D*4 per pass and backward) and the coefficients: each pass reads R and writes ln rho
    (2*I*J*4), its backward reads both gradients and R (3*I*J*4), and the normalisation over
    receiving parents between passes (PyTorch) streams ~10 coefficient-sized tensors forward and
    ~15 backward.
    """
    flops = bytes_ = 0.0
    for p, i, j, t in windows:
        d = 16
        s = i * j * d * 4
        em = t * (2 * 2 * i * j * 2 * d + 4 * i * j * d)
        if path == "fused-compiled" and coupled:
            votes, pairs = 2 * i * j * 64, i * j
            fwd = t * (votes + 5 * pairs * d) + (t - 1) * 4 * pairs * d + 2 * pairs * d
            bwd = t * (votes + 5 * pairs * d + 12 * pairs * d + 2 * votes) + (t - 1) * (4 + 7) * pairs * d
            flops += p * (fwd + bwd)
            per_pass = 2 * i * d * 4 + 5 * pairs * 4
            bytes_ += p * (t * per_pass + (t - 1) * 25 * pairs * 4)
        elif path == "fused" and coupled:
            fwd = 2 * t * 2 * i * j * 64 + em
            flops += p * 3 * fwd
            bytes_ += p * (2 * t * 3 * (i * d * 4 + 2 * i * j * 4))
        elif path == "fused-compiled":
            votes = 2 * i * j * 64
            flops += p * (3 * (votes + em) + votes)
            state = ((t - 1) * i * j + 3 * t * j * d + 3 * t * j + j * d) * 4
            bytes_ += p * (3 * i * d * 4 + 3 * j * (d + 1) * 4 + 2 * state)
        elif path == "fused":
            fwd = 2 * i * j * 64 + em
            flops += p * (fwd * 2 + 2 * fwd)
            bytes_ += p * (3 * i * d * 4 + 3 * j * (d + 1) * 4)
        else:
            fwd = 2 * i * 16 * 16 * j + em
            passes = 2 if checkpointing else 1
            flops += p * (fwd * passes + 2 * fwd)
            fwd_bytes = (3 + 4 * t) * s
            bytes_ += p * (fwd_bytes * passes + 3.3 * fwd_bytes)
    return {"gflop": flops / 1e9, "gbyte": bytes_ / 1e9}


def per_window_line(label: str, windows, coupled: bool) -> str:
    """The model for one window of the widest routed layer: MFLOP and KB of memory traffic per path."""
    _, i, j, t = max(windows, key=lambda w: w[1])
    one = [(1, i, j, t)]
    ref, ckpt = path_model(one, "reference", False), path_model(one, "reference", True)
    fus = path_model(one, "fused", False, coupled)
    line = (
        f"{label}, per window (I={i}, J={j}, T={t}): reference {ref['gflop'] * 1e3:.1f} MFLOP / "
        f"{ref['gbyte'] * 1e6:.0f} KB ({ckpt['gflop'] * 1e3:.1f} / {ckpt['gbyte'] * 1e6:.0f} with checkpointing), "
        f"fused {fus['gflop'] * 1e3:.1f} MFLOP / {fus['gbyte'] * 1e6:.1f} KB"
    )
    kernel = path_model(one, "fused-compiled", False, coupled)
    line += f", compiled kernel {kernel['gflop'] * 1e3:.1f} MFLOP / {kernel['gbyte'] * 1e6:.1f} KB"
    return line


def config_depths(spec: Path, base: list[str], keep: str | None) -> list[tuple[int, list]]:
    """(depth, routed windows of each layer) of every run of the spec, those in ``keep`` only when given."""
    from capsbench import spec as spec_mod

    depths = [int(run.config.model.depth) for run in spec_mod.load(str(spec), base)]
    wanted = {int(d) for d in keep.split(",")} if keep else set(depths)
    return [(d, w) for d, w in zip(depths, routed_windows(spec, base)) if d in wanted]


def run_variant(spec: Path, overrides: list[str], variant: str, steps: int) -> dict:
    """One variant's measured step (its own process, ``bench_spec``), under the variant's environment."""
    extra, env = VARIANTS[variant]
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        (r,) = bench_spec(str(spec), [*overrides, *extra], steps=steps, warmup=1)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return r


def table_row(label: str, depth, variant: str, r: dict, ref: dict, machine: dict) -> str:
    """One Markdown row: measured step and memory, both relative to the reference, and the model's floor."""
    model, ms = r["model"], r.get("train_step_ms")
    if not ms or not ref.get("train_step_ms"):
        return f"| {label} | {depth} | {variant} | {r.get('error') or ref.get('error')} | | | | | | | | | |"
    floor_s = max(model["gflop"] / machine["gemm_gflops_1thread"], model["gbyte"] / machine["copy_gbs_1thread"])
    model["floor_s"] = floor_s
    cpu, ref_cpu = r.get("train_step_cpu_ms"), ref.get("train_step_cpu_ms")
    cpu_cells = f"{cpu:.0f} | {ref_cpu / cpu:.2f}x" if cpu and ref_cpu else "n/a | n/a"
    backends = ", ".join(sorted(set(r.get("routing_backend", {}).values())))  # the code that ran (bench records it)
    return (
        f"| {label} | {depth} | {variant}{f' ({backends})' if backends else ''} | {ms:.0f} | "
        f"{ref['train_step_ms'] / ms:.2f}x | {cpu_cells} | {r['peak_memory_mb']:.0f} | "
        f"{r['peak_memory_mb'] / ref['peak_memory_mb']:.2f} | {model['gflop']:.1f} | {model['gbyte']:.1f} | "
        f"{floor_s * 1e3:.0f} | {(cpu or ms) / 1e3 / floor_s:.1f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="paper-mini depth 4 only")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--only", default=None, help="run only the configurations whose label contains this")
    parser.add_argument("--depths", default=None, help="comma-separated depths to keep (default: each config's)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if os.environ.get("OMP_NUM_THREADS") != "1":
        raise SystemExit("run with OMP_NUM_THREADS=1: the targets are one-thread numbers")
    # the load average says what else the machine was doing (a shared 2-core machine: other processes)
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        **probe_machine(),
        "load_average_at_start": [round(x, 1) for x in os.getloadavg()],
    }
    print(f"machine: {machine}", flush=True)
    rows, results = [], []
    for label, (spec, base) in CONFIGS.items():
        if (args.quick and label != "paper-mini EM") or (args.only and args.only not in label):
            continue
        base = [*base, "sweep.model.depth=[4]"] if args.quick else base
        for depth, windows in config_depths(spec, base, args.depths):
            one = [*base, f"sweep.model.depth=[{depth}]"]
            print(per_window_line(label, windows, "VB" in label), flush=True)
            measured = {}
            for variant in variants:  # interleaved: all paths of this depth, one after the other
                r = run_variant(spec, one, variant, args.steps)
                r.update(label=label, variant=variant)
                path = "reference" if variant.startswith("reference") else "fused"
                path = "fused-compiled" if variant == "fused-compiled" else path
                r["model"] = path_model(windows, path, variant == "reference", coupled="VB" in label)
                results.append(r)
                measured[variant] = r
                rows.append(table_row(label, depth, variant, r, measured[variants[0]], machine))
                print(rows[-1], flush=True)
    machine["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
    tag = args.tag or f"cpu{os.cpu_count()}-1thread"
    write_json(HERE / "results" / f"fused-{tag}.json", {"machine": machine, "steps": args.steps, "results": results})
    header = [
        f"Machine: {machine}",
        "",
        "| config | depth | path | step ms (median, wall) | speed-up vs reference | step CPU ms (median) | "
        "speed-up by CPU time | peak MB | memory vs reference | model GFLOP (routing) | model GB moved (routing) | "
        "routing floor ms | step (CPU time) / floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    write_text(HERE / "results" / f"fused-{tag}.md", "\n".join(header + rows) + "\n")


if __name__ == "__main__":
    main()
