"""EM routing on the CPU through the compiled per-window kernel (``em_window.c``), with its backward.

Serves EM's fused path for windows normalised over parent types with 4x4 matrix votes and
cost "sum" or "mean", capsbench's EM and its variants (``RENORMALISE``, ``INITIAL_ONE``; the
uniform control is one M-step); other options take the PyTorch paths. Each window's votes are
recomputed from the child poses and the weights into a private buffer (147 KB in fp32 for
a 3x3x16 -> 16 window, L2-resident) and all iterations run there. When a backward can follow,
the forward also keeps each window's "state": the coefficients of iterations 2..T and every
iteration's per-parent statistics ((T-1)/16 of the window's votes plus ~4 KB; 11% of the votes
of a 3x3x16 -> 16 window at T = 2, 20% at T = 3), so the backward recomputes only the votes,
not the iterations. Votes-sized tensors never reach memory.

Parallelism (``native/blocks.py``): blocks of windows of a size that depends only on the window
count, run on ``torch.get_num_threads()`` threads. Each block writes its own partial weight and beta
gradients, summed afterwards in block order, so every result is bit-identical for any number of
threads.
"""

from __future__ import annotations

import os

import torch

from capsbench.capsules.routing.native import build
from capsbench.capsules.routing.native.blocks import blocks, ptr, run_blocks

COSTS = ("sum", "mean")  # EM cost options the kernel implements
RENORMALISE, INITIAL_ONE = 1, 2  # em_window.c's variant flags: yl-1993's weights, SR-CapsNet's R = 1
SWITCH = "CAPSBENCH_CPU_EM_KERNEL"  # "0": EM's fused CPU path takes the PyTorch blockwise path (benchmarks compare)
WHAT = "CPU EM kernel"


def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the kernel is enabled and built (compiled on the first call) for ``dtype``."""
    return os.environ.get(SWITCH, "1") != "0" and dtype in build.TYPES and build.load(dtype) is not None


def backend(dtype: torch.dtype) -> str:
    """The name records give this kernel (``environment.routing_backend``): ``c-`` and its instruction set."""
    return f"c-{build.load(dtype).isa}"


def usable(pose: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor | None) -> bool:
    """Whether the kernel covers this call (the caller has checked the options: matrix votes, over parent types)."""
    return (
        pose.device.type == "cpu"
        and weight.shape[-2:] == (4, 4)
        and pose.shape[-1] == 16
        and (offsets is None or not offsets.requires_grad)
        and available(pose.dtype)
    )


class _EMWindows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pose, act, weight, beta_u, beta_a, offsets, lambdas, min_var, cost_div, need_coefficients,
                keep_state, variant=0, terms=None):  # fmt: skip
        kernel = build.load(pose.dtype)
        pose, act, weight = pose.contiguous(), act.contiguous(), weight.contiguous()
        beta_u, beta_a = beta_u.contiguous(), beta_a.contiguous()
        offsets = offsets.contiguous() if offsets is not None else None
        p, i = act.shape
        j = weight.shape[1]
        lam = torch.tensor(lambdas, dtype=pose.dtype)
        out_pose = pose.new_empty(p, j, 16)
        out_act = pose.new_empty(p, j)
        coef = pose.new_empty(p, j, i) if need_coefficients else pose.new_empty(0)
        # what the backward needs besides the votes (coefficients and statistics of every iteration, ~1/9
        # of the window's votes at T = 2), so that it recomputes only the votes; kept when a backward can run
        state = pose.new_empty(p, kernel.state_size(i, j, len(lambdas))) if keep_state else None
        args = (i, j, len(lambdas), pose.data_ptr(), act.data_ptr(), weight.data_ptr(), ptr(offsets),
                beta_u.data_ptr(), beta_a.data_ptr(), lam.data_ptr(), min_var, cost_div, variant,
                out_pose.data_ptr(), out_act.data_ptr(), coef.data_ptr() if need_coefficients else None,
                ptr(state), ptr(terms))  # fmt: skip
        run_blocks(lambda k, start, stop: kernel.forward(start, stop, *args), blocks(p), WHAT)
        ctx.save_for_backward(pose, act, weight, beta_u, beta_a, offsets, lam, state)
        ctx.settings = (min_var, cost_div, variant)
        ctx.mark_non_differentiable(coef)
        return out_pose, out_act, coef

    @staticmethod
    def backward(ctx, g_pose, g_act, _g_coef):
        pose, act, weight, beta_u, beta_a, offsets, lam, state = ctx.saved_tensors
        kernel = build.load(pose.dtype)
        bwd, sum_blocks = kernel.backward, kernel.sum_blocks
        p, i = act.shape
        j = weight.shape[1]
        g_pose = torch.zeros(p, j, 16, dtype=pose.dtype) if g_pose is None else g_pose.contiguous()
        g_act = torch.zeros(p, j, dtype=pose.dtype) if g_act is None else g_act.contiguous()
        cut = blocks(p)
        want_w = ctx.needs_input_grad[2]
        grad_pose, grad_act = torch.empty_like(pose), torch.empty_like(act)
        part_w = pose.new_empty(len(cut), i * j * 16) if want_w else None
        part_b = pose.new_empty(len(cut), 2, j)
        args = (i, j, lam.numel(), pose.data_ptr(), act.data_ptr(), weight.data_ptr(), ptr(offsets),
                beta_u.data_ptr(), beta_a.data_ptr(), lam.data_ptr(), *ctx.settings, g_pose.data_ptr(),
                g_act.data_ptr(), grad_pose.data_ptr(), grad_act.data_ptr())  # fmt: skip

        def call(k, start, stop):
            return bwd(start, stop, *args, ptr(part_w[k]) if want_w else None, part_b[k, 0].data_ptr(),
                       part_b[k, 1].data_ptr(), ptr(state))  # fmt: skip

        run_blocks(call, cut, WHAT)

        def total(parts):  # in block order, whatever the thread count
            out = parts.new_empty(parts.shape[1:])
            sum_blocks(parts.shape[0], out.numel(), parts.data_ptr(), out.data_ptr())
            return out

        grad_w = total(part_w).view(weight.shape) if want_w else None
        grad_b = total(part_b)
        return grad_pose, grad_act, grad_w, grad_b[0], grad_b[1], None, None, None, None, None, None, None, None


def em_routing_cpu(pose, act, weight, beta_u, beta_a, offsets, *, lambdas, min_var, cost, need_coefficients, variant=0,
                   terms=None):  # fmt: skip
    """EM over windows ``pose [P, I, 16]``, ``act [P, I]``, per-child ``weight [I, J, 4, 4]``, ``offsets [I, 16]``.

    ``variant``: 0 (capsbench's EM) or the flags ``RENORMALISE | INITIAL_ONE``; one M-step per lambda
    (the ``coefficients="uniform"`` control is one lambda, the last).

    Returns pose ``[P, J, 16]``, activation ``[P, J]`` and, when ``need_coefficients``, the
    detached coefficients ``[P, J, I]`` (else None). ``terms``: an optional ``[P, 3, J]`` buffer (the
    poses' dtype, contiguous) the forward fills with the last M-step's mass, cost and activation logit
    per parent, as telemetry reads them (``EMRouting.last_terms``); it gets no gradient. Call only where
    :func:`usable` holds.
    """
    if terms is not None and (terms.shape != (act.shape[0], 3, weight.shape[1]) or terms.dtype != pose.dtype
                              or not terms.is_contiguous()):  # fmt: skip
        raise ValueError(f"terms: expected a contiguous {pose.dtype} buffer [P, 3, J], got {tuple(terms.shape)}")
    cost_div = float(act.shape[1]) if cost == "mean" else 1.0
    keep_state = torch.is_grad_enabled() and any(t.requires_grad for t in (pose, act, weight, beta_u, beta_a))
    out_pose, out_act, coef = _EMWindows.apply(
        pose, act, weight, beta_u, beta_a, offsets, tuple(lambdas), float(min_var), cost_div, need_coefficients,
        keep_state, variant, terms,
    )  # fmt: skip
    return out_pose, out_act, (coef if need_coefficients else None)
