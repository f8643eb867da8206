"""Fused routing on any device: the votes of a block of windows at a time, never those of the layer.

A routing whose windows are independent (coefficients normalised over the parent types at
one position) can run all its iterations on one block of windows at a time. The votes of a
block are computed from the child poses and the vote weights, used, and dropped; the
backward recomputes them block by block (and the block's routing, under autograd) instead
of storing anything votes-sized. Peak memory is then the child poses plus one block, and
each block's working set stays in the cache while every iteration streams it.

:func:`route_in_blocks` is the machinery; the routing supplies the per-block maths (the
same function its reference ``forward`` runs, so both paths compute the same formulas).
Routings whose windows are coupled through the coefficients (normalised over every
receiving parent: VB's default) use :class:`LazyCentredVotes` instead: each contraction over
children is one pass over the blocks, and only the coefficients ``[N, L, J, I]`` (1/D of the
votes) cross blocks between iterations.
:data:`MEASURED_FASTER` records, per routing and device type, whether this path was
measured faster than the materialised one (``benchmarks/run_fused_benchmark.py``):
``routing_impl="auto"`` picks it only there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from capsbench.capsules.routing.ops import EPS
from capsbench.capsules.routing.votes import LazyVotes

# (routing, device type) -> whether the fused path was measured faster than the reference path.
# Absent = not measured = not faster. CPU, EM: the compiled per-window kernel (routing/native) measured
# 5.1-6.6x faster per training step (process CPU time, one thread, AVX-512 build) with 0.34-0.43x the
# peak memory (benchmarks/results/fused-cpu2-1thread-vectorised.md); EMRouting.fused_faster claims it only
# where that kernel serves the configuration and builds (the PyTorch blockwise path alone measured
# 0.65-0.93x: benchmarks/results/fused-cpu2-1thread.md). CPU, VB: its compiled kernel (one pass over the
# windows per iteration, routing/native/vb_window.c) measured 2.3-2.7x faster by process CPU time with
# 0.57-0.65x the peak memory (benchmarks/results/fused-cpu2-1thread-vb-isa.md); VBRouting.fused_faster
# claims it only where the kernel builds and the poses are 4x4 (its PyTorch blockwise path alone measured
# 0.49x: benchmarks/results/fused-cpu2-1thread-vb.md). CUDA: for the Triton kernel's measurement to set.
MEASURED_FASTER: dict[tuple[str, str], bool] = {("em", "cpu"): True, ("vb", "cpu"): True}

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


def _flat_inputs(votes: LazyVotes, dtype: torch.dtype, block: int | None):
    """Child poses ``[N*L, I, D_in]``, per-child weights, offsets, how votes are made, windows per block."""
    n, length, i, j, d = votes.shape
    pose = votes.pose.to(dtype).reshape(n * length, i, -1)
    weight = votes.per_child_weight().to(dtype)  # [I, J, s, s] or [I, D_in, J*D]
    offsets = votes.offsets.to(dtype) if votes.offsets is not None else None
    block = block or block_windows(votes, torch.finfo(dtype).bits // 8)
    return pose, weight, offsets, (votes.transform, j, d), block


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
    pose, weight, offsets, how, block = _flat_inputs(votes, dtype, block)
    act = activation.to(dtype).reshape(n * length, i)

    def routed(v, a, *params):
        out_pose, out_act, r = fn(v, a, *params)
        return (out_pose, out_act, r.detach()) if need_coefficients else (out_pose, out_act)

    outs = _Blockwise.apply(routed, how, block, 1, 2, pose, weight, offsets, act, *params)
    new_pose, new_act, r = outs if need_coefficients else (*outs, None)
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


def _map_blocks(fn, how, block: int, pose, weight, offsets, sliced, shared) -> list[torch.Tensor]:
    """``fn(votes_block, *sliced_blocks, *shared)`` over the blocks of windows, outputs concatenated over blocks."""
    parts = []
    for start in range(0, pose.shape[0], block):
        stop = min(start + block, pose.shape[0])
        v = _block_votes(pose[start:stop], weight, offsets, how)
        parts.append(fn(v, *[t[start:stop] for t in sliced], *shared))
    return [torch.cat(column) for column in zip(*parts)]


def map_windows(
    fn: Callable[..., tuple[torch.Tensor, ...]],
    votes: LazyVotes,
    dtype: torch.dtype,
    sliced: Sequence[torch.Tensor] = (),
    shared: Sequence[torch.Tensor] = (),
    block: int | None = None,
) -> list[torch.Tensor]:
    """``fn(v [B, I, J, D], *sliced_blocks, *shared)`` over every block of windows, without autograd.

    For what reads the votes once more after the routing (telemetry's activation terms): the
    per-window tensors in ``sliced`` (``[N*L, ...]``) are cut into the same blocks as the votes;
    ``fn`` returns per-window tensors ``[B, ...]``, concatenated over blocks (``[N*L, ...]``).
    """
    pose, weight, offsets, how, block = _flat_inputs(votes, dtype, block)
    with torch.no_grad():
        return _map_blocks(fn, how, block, pose, weight, offsets, sliced, shared)


class _Blockwise(torch.autograd.Function):
    """``fn`` over blocks of windows, forward without autograd; backward recomputes each block under autograd.

    Inputs: the child poses ``[P, I, D_in]``, the per-child weights and offsets, ``n_sliced``
    per-window tensors (``[P, ...]``, cut into blocks like the poses) and shared tensors.
    ``fn(votes_block, *sliced_blocks, *shared)`` returns per-window outputs, concatenated over
    blocks; only the first ``n_diff`` are differentiable. Nothing votes-sized is saved: only the
    inputs.
    """

    @staticmethod
    def forward(ctx, fn, how, block, n_sliced, n_diff, pose, weight, offsets, *rest):
        outs = _map_blocks(fn, how, block, pose, weight, offsets, rest[:n_sliced], rest[n_sliced:])
        ctx.fn, ctx.how, ctx.block, ctx.n_sliced, ctx.n_diff = fn, how, block, n_sliced, n_diff
        ctx.save_for_backward(pose, weight, offsets, *rest)
        ctx.mark_non_differentiable(*outs[n_diff:])
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grad_outs):
        pose, weight, offsets, *rest = ctx.saved_tensors
        leaves = [pose, weight, offsets, *rest]
        sliced = [True, False, False] + [k < ctx.n_sliced for k in range(len(rest))]
        wanted = [t is not None and need for t, need in zip(leaves, ctx.needs_input_grad[5:])]
        grads = [torch.zeros_like(t) if w else None for t, w in zip(leaves, wanted)]
        n_diff = ctx.n_diff
        for start in range(0, pose.shape[0], ctx.block):
            stop = min(start + ctx.block, pose.shape[0])
            with torch.enable_grad():
                inputs = [
                    t if t is None else (t[start:stop] if cut else t).detach().requires_grad_(w)
                    for t, cut, w in zip(leaves, sliced, wanted)
                ]
                v = _block_votes(inputs[0], inputs[1], inputs[2], ctx.how)
                outs = ctx.fn(v, *inputs[3:])
                found = torch.autograd.grad(
                    outs[:n_diff], [x for x, w in zip(inputs, wanted) if w],
                    [g[start:stop] for g in grad_outs[:n_diff]], allow_unused=True,
                )  # fmt: skip
            found = iter(found)
            for k, w in enumerate(wanted):
                if not w:
                    continue
                g = next(found)
                if g is None:
                    continue
                if sliced[k]:
                    grads[k][start:stop] = g
                else:
                    grads[k] += g
        return (None, None, None, None, None, *grads)


class LazyCentredVotes:
    """``[v - c, (v - c)^2]`` of every window, made a block at a time inside each contraction over children.

    The lazy twin of :func:`capsbench.capsules.routing.ops.prepare_votes`' first output, for
    routings whose windows are coupled (coefficients normalised over every receiving parent):
    there each iteration needs the coefficients of all windows before the next, so instead of
    running all iterations per block, every contraction over children (:meth:`moments`,
    :meth:`dot_per_child`) is one pass over the blocks that recomputes their votes, in the forward
    and again in the backward. What crosses blocks is the coefficients ``[N, L, J, I]``, 1/D of
    the votes. ``centre`` ``[N, L, J, D]`` is computed once, without gradient, as in the reference.
    """

    def __init__(self, votes: LazyVotes, activation: torch.Tensor, dtype: torch.dtype, block: int | None = None):
        n, length, i, j, d = self.dims = votes.shape
        self.pose, self.weight, self.offsets, self.how, self.block = _flat_inputs(votes, dtype, block)
        act = activation.to(dtype).reshape(n * length, i)
        with torch.no_grad():
            parts = []
            for start in range(0, n * length, self.block):
                stop = min(start + self.block, n * length)
                v = _block_votes(self.pose[start:stop], self.weight, self.offsets, self.how)
                a = act[start:stop]
                weighted = torch.einsum("bi,bijd->bjd", a, v)
                parts.append(weighted / (a.sum(-1) + EPS)[:, None, None])
            self.centre = torch.cat(parts).view(n, length, j, d)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of the materialised layout, ``[N*L*J, I, 2D]`` (routings read the children count from it)."""
        n, length, i, j, d = self.dims
        return n * length * j, i, 2 * d

    def _contract(self, fn, per_window: torch.Tensor) -> torch.Tensor:
        centre = self.centre.reshape(-1, *self.centre.shape[2:])
        (out,) = _Blockwise.apply(fn, self.how, self.block, 2, 1, self.pose, self.weight, self.offsets, centre,
                                  per_window.reshape(centre.shape[0], *per_window.shape[2:]))  # fmt: skip
        return out

    def moments(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :func:`ops.moments`: ``sum_i w``, ``sum_i w (v - c)``, ``sum_i w (v - c)^2``; ``weights [N, L, J, I]``."""

        def sums(v, c, w):
            centred = v - c.unsqueeze(1)  # [B, I, J, D]
            both = torch.cat([centred, centred.square()], dim=-1)
            return (torch.einsum("bji,bijk->bjk", w, both),)

        out = self._contract(sums, weights).view(*weights.shape[:3], -1)
        d = out.shape[-1] // 2
        return weights.sum(-1), out[..., :d], out[..., d:]

    def dot_per_child(self, coef: torch.Tensor) -> torch.Tensor:
        """``sum_k coef[j, k] [v - c, (v - c)^2]_{ijk}`` for every child and parent, ``[N, L, J, I]``."""

        def dots(v, c, k):
            centred = v - c.unsqueeze(1)
            both = torch.cat([centred, centred.square()], dim=-1)
            return (torch.einsum("bjk,bijk->bji", k, both),)

        return self._contract(dots, coef).view(*coef.shape[:3], -1)
