"""VB routing on the CPU through the compiled kernel (``vb_window.c``): one pass over the windows per iteration.

VB's default normalises the coefficients over every parent that receives a child, which
couples overlapping windows, so the iterations cannot all run inside one window as EM's
kernel does. Instead each iteration is one pass of the kernel over all windows: it reads
the coefficients ``R_t`` ``[P, J, I]``, recomputes every window's votes from the child
poses and the 4x4 weights into a private buffer (L2-resident), runs the M-step and the
E-step there, and writes the log-weights ``[P, J, I]``; VBRouting normalises them in
PyTorch (``ops.Normaliser``, either axis) into ``R_{t+1}``. The last pass writes the
posterior the outputs are made from (mass, mean, precision, and the detached centre).
What crosses windows, and what autograd keeps per iteration, is ``R`` (1/16 of the votes);
each pass's backward recomputes its windows and goes back through the E-step and M-step.

Parallelism and determinism as in ``cpu_em`` (``native/blocks.py``): blocks of a size that depends
only on the window count, run on ``torch.get_num_threads()`` threads, weight-gradient partials summed
in block order. Built like EM's kernel (``build.open_library``: SSE2, AVX2 and AVX-512 builds that
give the same bits, the widest this CPU runs chosen at run time).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch

from capsbench.capsules.routing.native import build
from capsbench.capsules.routing.native.blocks import blocks, ptr, run_blocks
from capsbench.capsules.routing.votes import LazyVotes

SOURCE = Path(__file__).with_name("vb_window.c")
SWITCH = "CAPSBENCH_CPU_VB_KERNEL"  # "0": VB's fused CPU path takes the PyTorch blockwise path (benchmarks compare)
WHAT = "CPU VB kernel"


def _library(dtype: torch.dtype) -> build.Library | None:
    """The kernel's library for ``dtype``, or None (switched off, or no library: one warning)."""
    if os.environ.get(SWITCH, "1") == "0":
        return None
    return build.open_library(SOURCE, dtype, "the compiled CPU VB kernel")


def _functions(dtype: torch.dtype):
    """``(vb_pass, vb_pass_backward)`` for ``dtype``, or None."""
    lib = _library(dtype)
    if lib is None:
        return None
    p, i = ctypes.c_void_p, ctypes.c_int
    # window range, I, J, wishart, inputs (pose, act, weight, offsets), coef, prior, centre
    head = [ctypes.c_long, ctypes.c_long, i, i, i, *[p] * 7]
    fwd, bwd = lib.function("vb_pass"), lib.function("vb_pass_backward")
    fwd.argtypes, bwd.argtypes = [*head, *[p] * 5], [*head, *[p] * 8]
    return fwd, bwd


def backend(dtype: torch.dtype) -> str:
    """The name records give this kernel (``environment.routing_backend``): ``c-`` and its instruction set."""
    return f"c-{_library(dtype).isa}"


def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the kernel is enabled and built (compiled on the first call) for ``dtype``."""
    return dtype in build.TYPES and _functions(dtype) is not None


def usable(votes: LazyVotes, dtype: torch.dtype) -> bool:
    """Whether the kernel covers these votes: on the CPU, 4x4 matrix votes, constant offsets, a built kernel."""
    return (
        votes.pose.device.type == "cpu"
        and votes.transform == "matrix"
        and votes.weight.shape[-2:] == (4, 4)
        and votes.pose.shape[-1] == 16
        and (votes.offsets is None or not votes.offsets.requires_grad)
        and available(dtype)
    )


class _Pass(torch.autograd.Function):
    """One pass over the windows from the coefficients ``coef [P, J, I]``: the log-weights ``[P, J, I]``
    of the next E-step, or (``last``) the posterior ``mass [P, J]``, ``mean`` and ``prec`` ``[P, J, 16]``;
    then, when ``centre`` is None, the centre ``[P, J, 16]`` it computed (detached: routing outputs do
    not depend on it). Saves only its inputs and the centre; the backward recomputes every window."""

    @staticmethod
    def forward(ctx, pose, act, weight, offsets, coef, centre, prior, wishart, last):
        fwd, _ = _functions(pose.dtype)
        p, i = act.shape
        j = weight.shape[1]
        coef = coef.contiguous()
        outs = [pose.new_empty(s) for s in ([(p, j), (p, j, 16), (p, j, 16)] if last else [(p, j, i)])]
        logits, posterior = (None, outs) if last else (outs[0], [None] * 3)
        made = pose.new_empty(p, j, 16) if centre is None else None
        args = (i, j, wishart, pose.data_ptr(), act.data_ptr(), weight.data_ptr(), ptr(offsets), coef.data_ptr(),
                prior.data_ptr(), ptr(centre), ptr(made), ptr(logits), *map(ptr, posterior))  # fmt: skip
        run_blocks(lambda k, start, stop: fwd(start, stop, *args), blocks(p), WHAT)
        ctx.save_for_backward(pose, act, weight, offsets, coef, prior, made if centre is None else centre)
        ctx.wishart, ctx.last = wishart, last
        if made is not None:
            ctx.mark_non_differentiable(made)
            outs.append(made)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        pose, act, weight, offsets, coef, prior, centre = ctx.saved_tensors
        _, bwd = _functions(pose.dtype)
        p, i = act.shape
        j = weight.shape[1]
        shapes = [(p, j), (p, j, 16), (p, j, 16)] if ctx.last else [(p, j, i)]
        grads = [pose.new_zeros(s) if g is None else g.contiguous() for g, s in zip(grads, shapes)]
        g_logits, g_posterior = (None, grads) if ctx.last else (grads[0], [None] * 3)
        grad_pose, grad_act, grad_coef = torch.empty_like(pose), torch.empty_like(act), torch.empty_like(coef)
        cut = blocks(p)
        want_w = ctx.needs_input_grad[2]
        part_w = pose.new_empty(len(cut), *weight.shape) if want_w else None
        args = (i, j, ctx.wishart, pose.data_ptr(), act.data_ptr(), weight.data_ptr(), ptr(offsets),
                coef.data_ptr(), prior.data_ptr(), centre.data_ptr(), ptr(g_logits), *map(ptr, g_posterior),
                grad_pose.data_ptr(), grad_act.data_ptr(), grad_coef.data_ptr())  # fmt: skip
        run_blocks(lambda k, start, stop: bwd(start, stop, *args, ptr(part_w[k]) if want_w else None), cut, WHAT)
        grad_w = None
        if want_w:  # block partials summed in block order: the same bits for any thread count
            grad_w = part_w[0].clone()
            for part in part_w[1:]:
                grad_w += part
        return grad_pose, grad_act, grad_w, None, grad_coef, None, None, None, None


class Windows:
    """The windows of one VB layer call, flattened for the kernel: ``log_rho`` and ``posterior`` take the
    coefficients ``R [N, L, J, I]`` and run one pass each."""

    def __init__(self, votes: LazyVotes, act: torch.Tensor, dtype: torch.dtype, prior: tuple[float, ...], wishart):
        n, length, i, j, d = self.shape = votes.shape
        self.pose = votes.pose.to(dtype).reshape(n * length, i, d).contiguous()
        self.act = act.to(dtype).reshape(n * length, i).contiguous()
        self.weight = votes.per_child_weight().to(dtype).contiguous()
        self.offsets = votes.offsets.to(dtype).contiguous() if votes.offsets is not None else None
        self.prior = torch.tensor(prior, dtype=dtype)  # alpha0, kappa0, nu0, psi0, m0
        self.wishart = int(wishart)
        self.centre: torch.Tensor | None = None  # [P, J, 16], computed by the first pass

    def _pass(self, r: torch.Tensor, last: bool) -> tuple[torch.Tensor, ...]:
        n, length, i, j, _ = self.shape
        coef = r.reshape(n * length, j, i)
        outs = _Pass.apply(self.pose, self.act, self.weight, self.offsets, coef, self.centre, self.prior, self.wishart,
                           last)  # fmt: skip
        if self.centre is None:  # the first pass computed it: every later pass and backward reuses it
            *outs, self.centre = outs
        return tuple(outs)

    def log_rho(self, r: torch.Tensor) -> torch.Tensor:
        """``ln rho`` ``[N, L, J, I]`` after the M-step from ``r``."""
        n, length, i, j, _ = self.shape
        return self._pass(r, last=False)[0].view(n, length, j, i)

    def posterior(self, r: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The M-step from ``r``: mass ``[N, L, J]``, mean (centred), precision and centre ``[N, L, J, D]``."""
        n, length, _, j, d = self.shape
        mass, mean, prec = self._pass(r, last=True)
        per_entry = (n, length, j, d)
        return mass.view(n, length, j), mean.view(per_entry), prec.view(per_entry), self.centre.view(per_entry)
