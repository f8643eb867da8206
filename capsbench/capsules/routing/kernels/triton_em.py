"""EM routing normalised over parent types, fused in Triton: votes never leave registers.

The maths is exactly ``EMRouting.forward`` (``capsbench/capsules/routing/em.py``) for
``normalise="parents"`` and matrix votes ``v_ij = U_i @ W_ij`` (``U_i`` the child's 4x4
pose): centre (activation-weighted mean vote, a constant for autograd), ``R = 1/J``,
``T`` M-steps with activations weighting the statistics (no renormalisation), the variance
floor ``min_var`` added, costs ``sum`` / ``mean`` / ``standardise``, the E-step in log space
between M-steps, all in float32. Inputs of another dtype are computed in float32 and the
outputs are float32 (the layers cast back).

Entry points: :func:`em_routing_triton` (a ``torch.autograd.Function``: gradients for the
child poses, activations, weights and both betas) and :func:`available`.

Design
------
Why this is fast: with parents normalisation every window routes on its own, and one
3x3x16 -> 16 window's votes (144 x 16 x 16 fp32 = 147 KB) cost 4 multiply-adds per entry
to recompute from the child poses (9 KB) and the weights, less than reading them back
from HBM. So no program ever writes a vote; each pass over a window's children recomputes
them chunk by chunk in registers.

- **Forward** (``em_forward_kernel``): one program per ``BLOCK_P`` windows. Pass 0 computes
  the centre; then one pass per iteration recomputes the votes of ``BLOCK_I`` children at a
  time (tile ``[BLOCK_P, BLOCK_I, J_pow2, 16]``), rebuilds ``R`` from the previous M-step's
  per-window statistics (mean, variance, logit: ``J x 33`` floats, held in registers), and
  accumulates the next M-step's sums. ``R`` itself is never stored: ``T + 1`` passes, no
  ``I x J`` state. The per-iteration statistics (``T x J x 34`` floats per window, 4% of
  the votes) are written for the backward.
- **Backward**, recomputing rather than storing, in two programs:
  ``em_backward_stats_kernel`` (one program per ``BLOCK_P`` windows) walks the iterations
  in reverse, one pass over the children per E-step (``T - 1`` passes), and writes for each
  iteration the gradients of the M-step sums ``(g_S1, g_S2, g_mass)`` plus the window's
  share of the beta gradients. ``em_backward_children_kernel`` (one program per
  ``BLOCK_I`` children x a run of windows) then rebuilds each child's gradient over all
  iterations at once from those per-window gradients (one pass) and writes the child pose
  and activation gradients and a per-run partial of the weight gradient.
- **Memory traffic per window** (I = 144, J = 16, T = 3): HBM reads child poses and
  activations (9.8 KB) and writes the centre, statistics and outputs (~9 KB); the weights
  (147 KB, shared by all windows) come from L2, ``1/BLOCK_P`` of them per window per pass
  (``BLOCK_I`` x J x 16 at a time). The backward reads those again plus the output
  gradients and writes ``(g_S1, g_S2, g_mass)`` (6.3 KB) and the pose/activation gradients
  (9.8 KB): ~75 KB per window, forward and backward. The materialised path reads or writes
  about 65 vote-sized tensors (147 KB each) per forward and backward: ~9.6 MB per window.
- **Arithmetic** per window and pass: 4 x 36,864 multiply-adds for the votes plus ~10 flops
  per vote entry for the statistics, ~6.7 MFLOP per window forward and backward: the fused
  path is compute-bound (``em_layer_model`` in ``benchmarks/gpu_check.py``). No tensor
  cores: K = 4, and fp32 must stay exact.
- **Determinism**: no atomics anywhere. The weight gradient is written as per-run partials
  ``[runs, I, J, 16]`` and the beta gradients as per-window partials ``[P, J]``, both summed
  by ``torch.sum`` in a fixed order; the number of runs depends only on the shapes. So the
  backward is bitwise deterministic on a given device and shape.
- **Tiles**: ``BLOCK_P = 2`` windows x ``BLOCK_I = 2`` children x 16 parents x 16 entries
  (1,024 fp32, 8 per thread at 4 warps) for the window programs; the children program steps
  one window at a time with 2 children and keeps its 2 x 16 x 16 weights in registers for
  its whole run. ptxas for sm_90 (Triton 3.8, 3 iterations): forward 128 registers, backward
  statistics 168, backward children 128, no spills; doubling either tile dimension reaches
  255 registers and spills in the backward. These were chosen without a GPU to time them:
  ``benchmarks/gpu_check.sh`` times them and a few alternatives (the module constants are
  the knobs). The children program re-reads each window's statistics once per block of
  children (72 blocks of a 3x3x16 window, ~11 KB each, from L2): larger child blocks trade
  those reads for registers and occupancy. ``J`` is padded to a power of two and masked
  (10 class capsules -> 16). Pose dim 16 (4x4) only; coordinate addition and weights
  shared over positions (class capsules) are not fused: callers use the blockwise path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

try:  # Triton ships with CUDA builds of torch; CPU-only installs may lack it
    from capsbench.capsules.routing.kernels import _triton_em_jit as _jit
except ImportError:  # pragma: no cover - depends on the installation
    _jit = None

COSTS = ("sum", "mean", "standardise")
# Tiles, chosen from ptxas's register counts for sm_90 (no GPU was at hand to time them): larger
# tiles push the backward programs to 255 registers and spill. Windows-major programs share each
# weight tile across BLOCK_P windows; the children program holds its weights for its whole run.
BLOCK_P = 2  # windows per program (forward, backward statistics): weight reads from L2 / 2
BLOCK_I = 2  # children per chunk: tile [2, 2, 16, 16] = 1,024 fp32 over 128 threads
CHILD_BLOCK_P = 1  # windows per step of the children program: tile [1, 2, 16, 16]
CHILD_BLOCK_I = 2
NUM_WARPS = 4  # window programs
CHILD_NUM_WARPS = 4
TARGET_PROGRAMS = 1024  # the children kernel splits the windows into runs to fill the GPU
MIN_CAPABILITY = (8, 0)  # Ampere and later; the kernels were written for H100/H200


def available(device: torch.device | str) -> bool:
    """True where the fused kernels can run: a CUDA device of capability >= 8.0 with Triton installed."""
    device = torch.device(device)
    if _jit is None or device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= MIN_CAPABILITY


def _check(pose, act, weight, beta_u, beta_a, lambdas, min_var, cost) -> None:
    """ValueError naming the first argument that breaks the shape contract."""
    p, i = act.shape if act.dim() == 2 else (None, None)
    j = weight.shape[1] if weight.dim() == 4 else None
    problems = [
        (act.dim() == 2, f"act must be [P, I], got {tuple(act.shape)}"),
        (pose.shape == (p, i, 16), f"pose must be [P, I, 16] = [{p}, {i}, 16], got {tuple(pose.shape)}"),
        (weight.shape == (i, j, 4, 4), f"weight must be [I, J, 4, 4] with I = {i}, got {tuple(weight.shape)}"),
        (beta_u.shape == (j,) and beta_a.shape == (j,), f"beta_u and beta_a must be [J] = [{j}]"),
        (len(lambdas) >= 1, "lambdas must hold one inverse temperature per iteration"),
        (min_var > 0, f"min_var must be > 0, got {min_var}"),
        (cost in COSTS, f"cost must be one of {COSTS}, got {cost!r}"),
    ]
    for ok, message in problems:
        if not ok:
            raise ValueError(f"em_routing_triton: {message}")


class _FusedEM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pose, act, weight, beta_u, beta_a, lambdas, min_var, cost):
        (n_win, n_child), n_par, iters = act.shape, weight.shape[1], len(lambdas)
        lam = torch.tensor(lambdas, dtype=torch.float32, device=pose.device)
        out_pose = pose.new_empty(n_win, n_par, 16)
        out_act = pose.new_empty(n_win, n_par)
        centre = pose.new_empty(n_win, n_par, 16)
        st_mean = pose.new_empty(n_win, iters, n_par, 16)
        st_var = torch.empty_like(st_mean)
        st_mass = pose.new_empty(n_win, iters, n_par)
        st_logit = torch.empty_like(st_mass)
        scale = 1.0 / n_child if cost == "mean" else 1.0
        meta = launch_meta(iters, n_par, cost)
        _jit.em_forward_kernel[(math.ceil(n_win / BLOCK_P),)](
            pose, act, weight, beta_u, beta_a, lam, out_pose, out_act, centre, st_mean, st_var, st_mass, st_logit,
            n_win, n_child, n_par, float(min_var), scale, num_warps=NUM_WARPS, **meta["em_forward_kernel"],
        )  # fmt: skip
        ctx.save_for_backward(pose, act, weight, beta_u, lam, centre, st_mean, st_var, st_mass, st_logit)
        ctx.min_var, ctx.scale, ctx.meta = float(min_var), scale, meta
        return out_pose, out_act

    @staticmethod
    def backward(ctx, g_pose, g_act):
        pose, act, weight, beta_u, lam, centre, st_mean, st_var, st_mass, st_logit = ctx.saved_tensors
        (n_win, n_child), n_par = act.shape, weight.shape[1]
        g_pose = _dense(g_pose, (n_win, n_par, 16), pose)
        g_act = _dense(g_act, (n_win, n_par), pose)
        gs_s1, gs_s2, gs_mass = torch.empty_like(st_mean), torch.empty_like(st_mean), torch.empty_like(st_mass)
        g_beta_u = pose.new_empty(n_win, n_par)
        g_beta_a = pose.new_empty(n_win, n_par)
        _jit.em_backward_stats_kernel[(math.ceil(n_win / BLOCK_P),)](
            pose, act, weight, beta_u, lam, centre, st_mean, st_var, st_mass, st_logit, g_pose, g_act,
            gs_s1, gs_s2, gs_mass, g_beta_u, g_beta_a, n_win, n_child, n_par, ctx.min_var, ctx.scale,
            num_warps=NUM_WARPS, **ctx.meta["em_backward_stats_kernel"],
        )  # fmt: skip
        child_blocks = math.ceil(n_child / CHILD_BLOCK_I)
        runs = max(1, min(math.ceil(n_win / CHILD_BLOCK_P), TARGET_PROGRAMS // child_blocks))
        per_run = math.ceil(math.ceil(n_win / runs) / CHILD_BLOCK_P) * CHILD_BLOCK_P
        runs = math.ceil(n_win / per_run)
        g_child_pose = torch.empty_like(pose)
        g_child_act = torch.empty_like(act)
        g_weight_runs = pose.new_empty(runs, n_child, n_par, 16)
        _jit.em_backward_children_kernel[(child_blocks, runs)](
            pose, act, weight, centre, st_mean, st_var, st_mass, st_logit, gs_s1, gs_s2, gs_mass,
            g_child_pose, g_child_act, g_weight_runs, n_win, n_child, n_par, ctx.min_var, per_run,
            num_warps=CHILD_NUM_WARPS, **ctx.meta["em_backward_children_kernel"],
        )  # fmt: skip
        g_weight = g_weight_runs.sum(0).view(n_child, n_par, 4, 4)
        return g_child_pose, g_child_act, g_weight, g_beta_u.sum(0), g_beta_a.sum(0), None, None, None


def launch_meta(iterations: int, parents: int, cost: str) -> dict[str, dict]:
    """The compile-time parameters of each program for one routing configuration."""
    common = dict(T=iterations, BJ=_pow2(parents))
    windows = dict(common, STANDARDISE=cost == "standardise", BP=BLOCK_P, BI=BLOCK_I)
    return {
        "em_forward_kernel": windows,
        "em_backward_stats_kernel": windows,
        "em_backward_children_kernel": dict(common, BP=CHILD_BLOCK_P, BI=CHILD_BLOCK_I),
    }


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _dense(grad: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An output gradient as a contiguous float32 tensor (zeros when autograd passes None)."""
    if grad is None:
        return like.new_zeros(shape)
    return grad.to(torch.float32).contiguous()


def em_routing_triton(
    pose: torch.Tensor,
    act: torch.Tensor,
    weight: torch.Tensor,
    beta_u: torch.Tensor,
    beta_a: torch.Tensor,
    *,
    lambdas: Sequence[float],
    min_var: float,
    cost: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EM routing over windows, normalised over parent types, votes recomputed in the kernels.

    ``pose [P, I, 16]`` child poses (windows already cut), ``act [P, I]``, ``weight
    [I, J, 4, 4]`` (vote ``v_ij = pose_i (4x4) @ weight[i, j]``), ``beta_u, beta_a [J]``;
    ``lambdas`` the inverse temperature of each iteration (``em.inverse_temperatures``),
    ``cost`` one of ``sum``, ``mean``, ``standardise``. Returns ``pose_out [P, J, 16]``
    and ``act_out [P, J]`` in float32, differentiable w.r.t. every tensor input.
    """
    if _jit is None:
        raise RuntimeError("em_routing_triton needs Triton, which is not installed")
    _check(pose, act, weight, beta_u, beta_a, lambdas, min_var, cost)
    f32 = [t.to(torch.float32).contiguous() for t in (pose, act, weight, beta_u, beta_a)]
    return _FusedEM.apply(*f32, tuple(float(x) for x in lambdas), float(min_var), cost)


__all__ = ["available", "em_routing_triton"]
