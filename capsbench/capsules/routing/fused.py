"""Fused routing on any device: the votes of a block of windows at a time, never those of the layer.

A routing whose windows are independent (coefficients normalised over the parent types at
one position) can run all its iterations on one block of windows at a time. The votes of a
block are computed from the child poses and the vote weights, used, and dropped; the
backward recomputes them block by block (and the block's routing, under autograd) instead
of storing anything votes-sized. Peak memory is then the child poses plus one block, and
each block's working set stays in the cache while every iteration streams it.

:func:`route_in_blocks` is the machinery; the routing supplies the per-block maths (the
same function its reference ``forward`` runs, so both paths compute the same formulas).
:data:`MEASURED_FASTER` records, per routing and device type, whether this path was
measured faster than the materialised one (``benchmarks/run_fused_benchmark.py``):
``routing_impl="auto"`` picks it only there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from capsbench.capsules.routing.votes import LazyVotes

# (routing, device type) -> whether the fused path was measured faster than the reference path.
# Absent = not measured = not faster. CPU, EM: measured SLOWER (benchmarks/results/fused-cpu2-1thread.md:
# 0.6-0.8x of the reference step, with a third to a half of its peak memory), so "auto" keeps the
# reference there; CUDA: for the Triton kernel's measurement to set.
MEASURED_FASTER: dict[tuple[str, str], bool] = {("em", "cpu"): False}

# Votes of one block, in bytes. Measured on the 2-core CPU (one thread, paper-mini layer, 1,152
# windows): 256 KB blocks 15.0 s, 1 MB 3.5 s, 4 MB 2.7-2.8 s, 16 MB 2.6-3.2 s, 64 MB 3.1 s per
# forward + backward: per-block operator overhead dominates below ~4 MB, cache misses above.
BLOCK_BYTES = 4 << 20


def measured_faster(routing: str, device_type: str) -> bool:
    return MEASURED_FASTER.get((routing, device_type), False)


def block_windows(votes: LazyVotes, itemsize: int, budget: int | None = None) -> int:
    """Windows per block: as many as keep one block's votes within ``budget`` bytes (at least 1)."""
    _, _, i, j, d = votes.shape
    return max(1, (budget or BLOCK_BYTES) // max(1, i * j * d * itemsize))


WindowFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def route_in_blocks(
    fn: WindowFn,
    votes: LazyVotes,
    activation: torch.Tensor,
    params: Sequence[torch.Tensor],
    dtype: torch.dtype,
    need_coefficients: bool,
    block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Route every window of ``votes`` a block at a time.

    ``fn(v [B, I, J, D], a [B, I], *params) -> (pose [B, J, D], activation [B, J], R [B, J, I])``
    is the routing of ``B`` independent windows. Returns pose ``[N, L, J, D]``, activation
    ``[N, L, J]`` and, when ``need_coefficients``, the detached ``R`` ``[N, L, J, I]``.
    Gradients reach the child poses, the activations, the vote weights (through
    ``weight_index`` when weights are shared) and ``params``.
    """
    n, length, i, j, d = votes.shape
    pose = votes.pose.to(dtype).reshape(n * length, i, -1)
    act = activation.to(dtype).reshape(n * length, i)
    weight = votes.per_child_weight().to(dtype)  # [I, J, s, s] or [I, D_in, J*D]
    offsets = votes.offsets.to(dtype) if votes.offsets is not None else None
    block = block or block_windows(votes, torch.finfo(dtype).bits // 8)
    how = (votes.transform, j, d)
    new_pose, new_act, r = _BlockwiseRouting.apply(
        fn, how, block, need_coefficients, pose, act, weight, offsets, *params
    )
    r = r.view(n, length, j, i) if need_coefficients else None
    return new_pose.view(n, length, j, d), new_act.view(n, length, j), r


def _block_votes(pose: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor | None, how) -> torch.Tensor:
    """Votes ``[B, I, J, D]`` of a block of windows: one batched matmul over children (+ offsets).

    Matrix votes are the ``s x s`` products themselves (``[I]`` batches of ``[B*s, s] @ [s, J*s]``):
    a quarter of the multiply-adds of the block-diagonal map the reference path uses, measured
    2.8x faster per block on one CPU thread despite the short inner dimension.
    """
    transform, j, d = how
    if transform == "matrix":
        b, i = pose.shape[:2]
        side = weight.shape[-1]
        u = pose.view(b, i, side, side).transpose(0, 1).reshape(i, b * side, side)  # rows (window, r), cols k
        w = weight.transpose(1, 2).reshape(i, side, j * side)  # rows k, cols (parent, c)
        votes = torch.bmm(u, w).view(i, b, side, j, side).permute(1, 0, 3, 2, 4).reshape(b, i, j, d)
    else:
        votes = torch.einsum("bik,ikq->biq", pose, weight).unflatten(-1, (j, d))
    return votes if offsets is None else votes + offsets[:, None, :]


class _BlockwiseRouting(torch.autograd.Function):
    """Forward without autograd, a block at a time; backward recomputes each block under autograd.

    Nothing votes-sized is saved: only the inputs (child poses, activations, weights). The
    coefficients output is not differentiable (telemetry reads it detached).
    """

    @staticmethod
    def forward(ctx, fn, how, block, need_coefficients, pose, act, weight, offsets, *params):
        p = pose.shape[0]
        poses, acts, coefs = [], [], []
        for start in range(0, p, block):
            stop = min(start + block, p)
            v = _block_votes(pose[start:stop], weight, offsets, how)
            out_pose, out_act, r = fn(v, act[start:stop], *params)
            poses.append(out_pose)
            acts.append(out_act)
            if need_coefficients:
                coefs.append(r)
        ctx.fn, ctx.how, ctx.block = fn, how, block
        ctx.save_for_backward(pose, act, weight, offsets, *params)
        r = torch.cat(coefs) if need_coefficients else pose.new_empty(0)
        ctx.mark_non_differentiable(r)
        return torch.cat(poses), torch.cat(acts), r

    @staticmethod
    def backward(ctx, grad_pose, grad_act, _grad_r):
        pose, act, weight, offsets, *params = ctx.saved_tensors
        leaves = [pose, act, weight, offsets, *params]
        wanted = [t is not None and need for t, need in zip(leaves, ctx.needs_input_grad[4:])]
        grads = [torch.zeros_like(t) if w else None for t, w in zip(leaves, wanted)]
        for start in range(0, pose.shape[0], ctx.block):
            stop = min(start + ctx.block, pose.shape[0])
            with torch.enable_grad():
                block_pose = pose[start:stop].detach().requires_grad_(wanted[0])
                block_act = act[start:stop].detach().requires_grad_(wanted[1])
                shared = [t if t is None else t.detach().requires_grad_(w) for t, w in zip(leaves[2:], wanted[2:])]
                v = _block_votes(block_pose, shared[0], shared[1], ctx.how)
                out_pose, out_act, _ = ctx.fn(v, block_act, *shared[2:])
                inputs = [block_pose, block_act, *shared]
                want = [x for x, w in zip(inputs, wanted) if w]
                found = torch.autograd.grad(
                    (out_pose, out_act), want, (grad_pose[start:stop], grad_act[start:stop]), allow_unused=True
                )
            found = iter(found)
            for k, w in enumerate(wanted):
                if not w:
                    continue
                g = next(found)
                if g is None:
                    continue
                if k < 2:
                    grads[k][start:stop] = g
                else:
                    grads[k] += g
        return (None, None, None, None, *grads)
