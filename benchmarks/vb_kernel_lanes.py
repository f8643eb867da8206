"""The CPU VB kernel (``routing/native/vb_window.c``) against the row-vector version it replaced: same bits, and cost.

    OMP_NUM_THREADS=1 python benchmarks/vb_kernel_lanes.py [--old-ref 569d0b5] [--quick] [--no-timing]
        [--reps 15] [--steps 5] [--rounds 2] [--depths 10,20] [--tag cpu1thread]

The old kernel is the source of ``vb_window.c`` at ``--old-ref`` (default: the last commit whose vectors were one
4-wide row of a pose), compiled by the same machinery (``native/build.py``) from a copy named
``vb_window_old.c`` (its own cache entry); ``cpu_vb.SOURCE`` points the loader at one or the other, in this
process and, for the training steps, in each child process. Nothing else differs between the two sides.

Bit-equality (``torch.equal`` on every value): for every dtype (float32, float64) and every instruction set this
CPU runs (``$CAPSBENCH_CPU_ISA`` = sse2, avx2, avx512), chains of kernel passes called through the real
autograd glue (``cpu_vb.Windows``: ``log_rho`` passes normalised by a softmax, then ``posterior``; a random
linear loss on every pass's output; backward) over offsets on/off, the Wishart log-determinant on/off,
J in {1, 3, 16, 17}, I in {1, 5, 36}, 1-3 iterations, two priors, 18 windows (two blocks) with activations that
are exactly zero (every third child, and every child of one window); each pass's log-weights, the posterior
(mass, mean, precision), the centre, and the gradients of the child poses, activations, weights and initial
coefficients. Then I = 144, J = 16 (the real window) at 3 iterations, a case without a weight gradient, and
whole VB layers (ConvCaps on the fused path, outputs and every parameter and input gradient). The script exits
non-zero if any value differs.

Timing (CPU seconds of this single-threaded process, ``time.process_time``, median; old and new alternate, so a
change in a shared machine's load hits both alike): the kernel alone, one pass over the long-cpu layer's windows
and its backward called straight through ctypes, per dtype and instruction set; forward + backward of one VB
routed layer at the long-cpu shape (ConvCaps 16 -> 16 types, 3x3 windows on a 2x2 grid, batch 32: 128 windows
of 144 children and 16 parents, float32), per instruction set; and one training step (as ``capsbench bench``:
one warm-up step, then ``--steps``, in a fresh process; ``--rounds`` processes per kernel, alternating, and the
median of their medians) of ``specs/remedies/arms/vb.yaml`` under the remedies screening spec at ``--depths``,
on the instruction set the kernels pick by themselves (the widest). Writes ``results/vb-kernel-lanes-<tag>.json``
with the machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # this checkout's capsbench, also in the child processes (PYTHONPATH below)

import torch  # noqa: E402

from capsbench.capsules.layers import ConvCaps  # noqa: E402
from capsbench.capsules.routing.native import build, cpu_vb  # noqa: E402
from capsbench.capsules.routing.votes import LazyVotes  # noqa: E402
from capsbench.capsules.types import Capsules  # noqa: E402

OLD_REF = "569d0b5"  # the last commit with the row-vector kernel (vec4: one row of a pose)
KERNEL = "capsbench/capsules/routing/native/vb_window.c"
SPEC = ROOT / "specs" / "remedies" / "screening.yaml"
ARM = "arms/vb.yaml"
PRIORS = [(1.0, 1.0, 17.0, 1.0, 0.0), (0.3, 2.0, 20.0, 0.5, 0.2)]  # VB's default; others (m0 != 0)


def old_source(ref: str) -> Path:
    """The kernel's source at ``ref``, copied to a temporary ``vb_window_old.c`` (built with this header)."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:{KERNEL}"], capture_output=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="vb-kernel-old-")) / "vb_window_old.c"
    path.write_bytes(text)
    return path


@contextmanager
def kernel(source: Path):
    """``cpu_vb`` loads ``source`` while inside."""
    saved = cpu_vb.SOURCE
    cpu_vb.SOURCE = source
    try:
        yield
    finally:
        cpu_vb.SOURCE = saved


def use_isa(isa: str | None) -> None:
    if isa is None:
        os.environ.pop(build.ISA_SWITCH, None)
    else:
        os.environ[build.ISA_SWITCH] = isa
    build.forget()


def instruction_sets() -> list[str]:
    use_isa(None)
    widest = build.widest_isa(build.load(torch.float32))
    return list(build.ISAS)[: list(build.ISAS).index(widest) + 1]


def passes(dtype, I, J, offsets, wishart, iterations, prior, windows=18, want_w=True, seed=0) -> list[torch.Tensor]:
    """Every output and gradient of ``iterations`` kernel passes through ``cpu_vb.Windows``."""
    g = torch.Generator().manual_seed(seed)
    pose = torch.randn(windows, 1, I, 16, generator=g, dtype=dtype)
    weight = 0.3 * torch.randn(I, J, 4, 4, generator=g, dtype=dtype)
    act = torch.rand(windows, 1, I, generator=g, dtype=dtype)
    act[:, :, ::3] = 0  # silent children: exact zeros
    act[1] = 0  # a window whose children are all silent
    off = torch.randn(I, 16, generator=g, dtype=dtype) if offsets else None
    r0 = torch.softmax(torch.randn(windows, 1, J, I, generator=g, dtype=dtype), dim=2)
    pose.requires_grad_(), act.requires_grad_(), r0.requires_grad_(), weight.requires_grad_(want_w)
    win = cpu_vb.Windows(LazyVotes(pose=pose, weight=weight, offsets=off), act, dtype, prior, wishart)
    r, values = r0, []
    for _ in range(iterations - 1):
        logits = win.log_rho(r)
        values.append(logits)
        r = torch.softmax(logits, dim=2)
    values += win.posterior(r)  # mass, mean, precision, centre
    loss = sum((v * torch.randn(v.shape, generator=g, dtype=dtype)).sum() for v in values[:-1])
    loss.backward()
    grads = [pose.grad, act.grad, r0.grad] + ([weight.grad] if want_w else [])
    return [v.detach() for v in values] + grads


def layer_run(dtype, options, seed=0, n=2, types=3, hw=(4, 4), out_types=4):
    """Outputs and every gradient of one fused VB ConvCaps (3x3 windows, stride 1, padding 1)."""
    torch.manual_seed(seed)
    layer = ConvCaps(types, out_types, 3, 1, 1, routing="vb", routing_impl="fused", **options).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(seed)
    pose = torch.randn(n, types, 16, *hw, generator=g, dtype=dtype).requires_grad_()
    act = torch.rand(n, types, *hw, generator=g, dtype=dtype)
    act[:, 0] = 0
    act.requires_grad_()
    out = layer(Capsules(pose, act))
    assert layer.last_impl == "fused" and layer.last_backend.startswith("c-"), (layer.last_impl, layer.last_backend)
    w_pose = torch.randn(out.pose.shape, generator=g, dtype=dtype)
    w_act = torch.randn(out.activation.shape, generator=g, dtype=dtype)
    ((out.pose * w_pose).sum() + (out.activation * w_act).sum()).backward()
    grads = [p.grad for p in layer.parameters() if p.grad is not None]
    return [out.pose.detach(), out.activation.detach(), layer.last_coefficients, pose.grad, act.grad, *grads]


def compare(old: list[torch.Tensor], new: list[torch.Tensor]) -> list[int]:
    """Indices of the values that differ in any bit (or in shape, or in number)."""
    if len(old) != len(new):
        return [-1]
    return [k for k, (a, b) in enumerate(zip(old, new)) if a.shape != b.shape or not torch.equal(a, b)]


def bit_grid(old: Path, new: Path, isas: list[str], quick: bool) -> dict:
    """Every case of the module docstring on both kernels, under each instruction set; returns the tally."""
    cases = []
    for dtype, offsets, wishart, J, I, iterations in itertools.product(
        (torch.float32, torch.float64), (False, True), (0, 1), (1, 3, 16, 17), (1, 5, 36), (1, 2, 3)
    ):
        if quick and (I, iterations) not in ((5, 2), (36, 3)):
            continue
        prior = PRIORS[(J + I + iterations) % 2]
        cases.append(("passes", dict(dtype=dtype, I=I, J=J, offsets=offsets, wishart=wishart,
                                     iterations=iterations, prior=prior)))  # fmt: skip
    for dtype, offsets, wishart in itertools.product((torch.float32, torch.float64), (False, True), (0, 1)):
        cases.append(("passes", dict(dtype=dtype, I=144, J=16, offsets=offsets, wishart=wishart, iterations=3,
                                     prior=PRIORS[0], windows=36)))  # fmt: skip
        cases.append(("passes", dict(dtype=dtype, I=7, J=10, offsets=offsets, wishart=wishart, iterations=2,
                                     prior=PRIORS[1], want_w=False)))  # fmt: skip
    for dtype, options in itertools.product(
        (torch.float32, torch.float64), ({}, {"log_det": "wishart"}, {"normalise": "parents", "iterations": 2})
    ):
        cases.append(("layer", dict(dtype=dtype, options=options)))
    tally = {"cases_per_isa": len(cases), "isas": isas, "values_compared": 0, "differing": []}
    for isa in isas:
        use_isa(isa)
        for what, case in cases:
            results = []
            for source in (old, new):
                with kernel(source):
                    assert cpu_vb.backend(case["dtype"]) == f"c-{isa}", (source, isa)
                    results.append((passes if what == "passes" else layer_run)(**case))
            bad = compare(*results)
            tally["values_compared"] += len(results[0])
            if bad:
                shown = {k: (str(v) if k in ("dtype", "options", "prior") else v) for k, v in case.items()}
                tally["differing"].append({"isa": isa, "what": what, **shown, "values": bad})
                print(f"DIFFERS: {isa} {what} {shown} values {bad}", flush=True)
        print(f"{isa}: {len(cases)} cases compared", flush=True)
    use_isa(None)
    return tally


def time_layer(old: Path, new: Path, isas: list[str], reps: int) -> list[dict]:
    """Forward + backward of one VB routed layer at the long-cpu shape, both kernels alternating, per ISA."""
    rows = []
    torch.manual_seed(0)
    layer = ConvCaps(16, 16, 3, 1, 1, routing="vb", routing_impl="fused")
    g = torch.Generator().manual_seed(0)
    pose = torch.randn(32, 16, 16, 2, 2, generator=g).requires_grad_()
    act = torch.rand(32, 16, 2, 2, generator=g).requires_grad_()
    for isa in isas:
        use_isa(isa)
        times = {"old": [], "new": []}
        for rep in range(reps + 1):
            for name, source in (("old", old), ("new", new)):
                with kernel(source):
                    layer.zero_grad(set_to_none=True)
                    pose.grad = act.grad = None
                    start = time.process_time()
                    out = layer(Capsules(pose, act))
                    (out.pose.sum() + out.activation.sum()).backward()
                    elapsed = time.process_time() - start
                    assert layer.last_backend == f"c-{isa}"
                if rep > 0:  # the first: warm-up (compile, first-touch)
                    times[name].append(elapsed)
        old_s, new_s = statistics.median(times["old"]), statistics.median(times["new"])
        rows.append({"isa": isa, "old_cpu_s": old_s, "new_cpu_s": new_s, "speedup": old_s / new_s, "reps": reps,
                     "old_min_s": min(times["old"]), "new_min_s": min(times["new"])})  # fmt: skip
        print(f"layer fwd+bwd {isa}: old {old_s * 1e3:.1f} ms, new {new_s * 1e3:.1f} ms, {old_s / new_s:.2f}x",
              flush=True)  # fmt: skip
    use_isa(None)
    return rows


def time_passes(old: Path, new: Path, isas: list[str], reps: int) -> list[dict]:
    """The kernel alone: one pass over the long-cpu layer's 128 windows (I = 144, J = 16; the centre computed,
    the log-weights written) and its backward (from log-weight gradients, with the weight gradient), called
    straight through ctypes in the blocks ``cpu_vb`` cuts, per dtype and ISA, both kernels alternating."""
    from capsbench.capsules.routing.native.blocks import blocks

    windows, children, parents = 128, 144, 16
    rows = []
    for dtype, isa in itertools.product((torch.float32, torch.float64), isas):
        use_isa(isa)
        g = torch.Generator().manual_seed(0)
        pose = torch.randn(windows, children, 16, generator=g, dtype=dtype)
        act = torch.rand(windows, children, generator=g, dtype=dtype)
        weight = 0.3 * torch.randn(children, parents, 16, generator=g, dtype=dtype)
        coef = torch.softmax(torch.randn(windows, parents, children, generator=g, dtype=dtype), dim=1)
        g_logits = torch.randn(windows, parents, children, generator=g, dtype=dtype)
        prior = torch.tensor(PRIORS[0], dtype=dtype)
        centre, logits = pose.new_empty(windows, parents, 16), pose.new_empty(windows, parents, children)
        g_pose, g_act, g_coef = torch.empty_like(pose), torch.empty_like(act), torch.empty_like(coef)
        cut = blocks(windows)
        g_weight = pose.new_empty(len(cut), children, parents, 16)
        head = (children, parents, 0, pose.data_ptr(), act.data_ptr(), weight.data_ptr(), None, coef.data_ptr(),
                prior.data_ptr())  # fmt: skip
        times = {"old": [], "new": []}
        for rep in range(reps + 1):
            for name, source in (("old", old), ("new", new)):
                with kernel(source):
                    fwd, bwd = cpu_vb._functions(dtype)
                start = time.process_time()
                for start_p, stop_p in cut:
                    fwd(start_p, stop_p, *head, None, centre.data_ptr(), logits.data_ptr(), None, None, None)
                middle = time.process_time()
                for k, (start_p, stop_p) in enumerate(cut):
                    bwd(start_p, stop_p, *head, centre.data_ptr(), g_logits.data_ptr(), None, None, None,
                        g_pose.data_ptr(), g_act.data_ptr(), g_coef.data_ptr(), g_weight[k].data_ptr())  # fmt: skip
                if rep > 0:
                    times[name].append((middle - start, time.process_time() - middle))
        row = {"dtype": str(dtype).removeprefix("torch."), "isa": isa, "reps": reps}
        for name, pairs in times.items():
            row[f"{name}_forward_s"] = statistics.median(f for f, _ in pairs)
            row[f"{name}_backward_s"] = statistics.median(b for _, b in pairs)
            row[f"{name}_total_s"] = row[f"{name}_forward_s"] + row[f"{name}_backward_s"]
        row["speedup"] = row["old_total_s"] / row["new_total_s"]
        print(f"kernel pass fwd+bwd {row['dtype']} {isa}: old {row['old_total_s'] * 1e3:.2f} ms, "
              f"new {row['new_total_s'] * 1e3:.2f} ms, {row['speedup']:.2f}x", flush=True)  # fmt: skip
        rows.append(row)
    use_isa(None)
    return rows


def training_steps(old: Path, new: Path, depths: str, steps: int, rounds: int) -> list[dict]:
    """One training step of the VB arm per depth and kernel, each measurement in a fresh process (as ``capsbench
    bench``: one warm-up step, then ``steps``, their median); ``rounds`` such processes per kernel, alternating,
    and the median of their medians."""
    from omegaconf import OmegaConf

    from capsbench import spec
    from capsbench.malloc import tuned_env

    env = {**tuned_env(), "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
           os.environ.get("PYTHONPATH")]))}  # fmt: skip
    rows = []
    overrides = [f"sweep.extends=[{ARM}]", f"sweep.model.depth=[{depths}]", "sweep.seed=[0]"]
    for run in spec.load(str(SPEC), overrides):
        payload = json.dumps({"config": OmegaConf.to_container(run.config), "steps": steps, "warmup": 1})
        row = {"arm": ARM, "depth": run.point.get("model.depth"), "spec_hash": run.spec_hash, "steps": steps,
               "rounds": rounds}  # fmt: skip
        measured = {"old": [], "new": []}
        for _ in range(rounds):
            for name, source in (("old", old), ("new", new)):
                child = subprocess.run([sys.executable, __file__, "--child", str(source)], input=payload,
                                       capture_output=True, text=True, env=env)  # fmt: skip
                if child.returncode != 0:
                    raise RuntimeError(f"training step ({name}, {row['depth']}) failed: {child.stderr.strip()[-2000:]}")
                measured[name].append(json.loads(child.stdout.strip().splitlines()[-1]))
        for name, results in measured.items():
            row[f"{name}_cpu_s"] = statistics.median(r["train_step_cpu_ms"] for r in results) / 1000
            row[f"{name}_wall_s"] = statistics.median(r["train_step_ms"] for r in results) / 1000
            row[f"{name}_cpu_s_per_round"] = [r["train_step_cpu_ms"] / 1000 for r in results]
            backends = {b for r in results for b in (r.get("routing_backend") or {}).values()}
            row[f"{name}_backend"] = sorted(backends - {None})
            row[f"{name}_last_loss"] = [r["last_loss"] for r in results]
        row["speedup"] = row["old_cpu_s"] / row["new_cpu_s"]
        print(f"training step depth {row['depth']}: old {row['old_cpu_s']:.3f} s, new {row['new_cpu_s']:.3f} s, "
              f"{row['speedup']:.2f}x ({row['new_backend']})", flush=True)  # fmt: skip
        rows.append(row)
    return rows


def child(source: str) -> None:
    """``capsbench bench``'s child process with ``cpu_vb`` pointed at ``source``."""
    from capsbench.bench import _child

    cpu_vb.SOURCE = Path(source)
    _child()


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-ref", default=OLD_REF, help="the commit whose vb_window.c is the old kernel")
    parser.add_argument("--quick", action="store_true", help="a smaller bit-equality grid")
    parser.add_argument("--no-timing", action="store_true", help="only the bit-equality grid")
    parser.add_argument("--reps", type=int, default=15, help="layer forward + backward repetitions per kernel")
    parser.add_argument("--steps", type=int, default=5, help="measured training steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per kernel and depth (alternating)")
    parser.add_argument("--depths", default="10,20")
    parser.add_argument("--tag", default="cpu1thread")
    args = parser.parse_args()
    torch.set_num_threads(1)
    old, new = old_source(args.old_ref), cpu_vb.SOURCE
    assert Path(cpu_vb.__file__).resolve().is_relative_to(ROOT), f"capsbench imported from {cpu_vb.__file__}"
    isas = instruction_sets()
    tally = bit_grid(old, new, isas, args.quick)
    same = not tally["differing"]
    print(f"bit-identical: {same} ({tally['values_compared']} values compared, {len(tally['differing'])} cases differ)")
    if args.no_timing:
        return 0 if same else 1
    pass_rows = time_passes(old, new, isas, 2 * args.reps)
    layer_rows = time_layer(old, new, isas, args.reps)
    step_rows = training_steps(old, new, args.depths, args.steps, args.rounds)
    from remedies_depth_cost import machine

    from capsbench.env import environment
    from capsbench.io import write_json

    out = HERE / "results" / f"vb-kernel-lanes-{args.tag}.json"
    write_json(out, {"machine": machine(), "environment": environment("cpu"), "old_ref": args.old_ref,
                     "bit_identical": same, "bit_grid": {**tally, "quick": args.quick},
                     "kernel_pass_fwd_bwd": {"shape": "P=128 windows (8 blocks), I=144, J=16, no offsets, "
                                                     "VB's prior, the centre computed", "rows": pass_rows},
                     "layer_fwd_bwd": {"shape": "ConvCaps 16->16, k3 s1 p1 on 2x2, batch 32: P=128, I=144, J=16, "
                                                "float32, 3 iterations", "rows": layer_rows},
                     "training_step": {"spec": "specs/remedies/screening.yaml", "rows": step_rows}})  # fmt: skip
    print(f"written: {out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
