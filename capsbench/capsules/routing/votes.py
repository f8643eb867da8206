"""Votes handed to a routing lazily: child poses, weights and transform, never the votes tensor.

The votes of one routed layer are ``[N, L, I, J, D]``: J times the child poses, and
(3x3x16 windows, 16 parents) 147 KB per window in fp32. A routing that defines
``forward_lazy`` receives a :class:`LazyVotes` instead and may compute the votes of a few
windows at a time from ``pose`` and ``weight`` (fused routing); every other routing gets
:meth:`LazyVotes.materialize`, exactly the tensor the layer would have computed.

Example::

    >>> import torch
    >>> w = torch.randn(9, 4, 4, 4)          # 9 children, 4 parents, 4x4 matrices
    >>> lazy = LazyVotes(pose=torch.randn(2, 5, 9, 16), weight=w, transform="matrix")
    >>> lazy.materialize().shape
    torch.Size([2, 5, 9, 4, 16])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def linear_weight(weight: torch.Tensor, transform: str) -> torch.Tensor:
    """A vote weight as one linear map per child, ``[I_w, D_in, J*D]``.

    ``"linear"`` weights are that already; ``"matrix"`` weights ``[I_w, J, s, s]`` act on
    the child's ``s x s`` pose matrix ``U`` as ``U @ W = (1 kron W) vec(U)``: a
    block-diagonal map (4x the multiply-adds of the 4x4 products, but one large GEMM).
    """
    if transform == "linear":
        return weight
    i, j, side = weight.shape[0], weight.shape[1], weight.shape[-1]
    eye = torch.eye(side, device=weight.device, dtype=weight.dtype)
    # entry [i, (r, k), (j, r', c)] = delta(r, r') W[i, j, k, c]
    return torch.einsum("rR,ijkc->irkjRc", eye, weight).reshape(i, side * side, j * side * side)


def project(pose: torch.Tensor, weight: torch.Tensor, transform: str, parents: int, pose_dim: int) -> torch.Tensor:
    """``pose [..., I, D_in]`` through per-child weights ``[I, ...]`` -> votes ``[..., I, J, D]``.

    One batched matmul over children (einsum); the result is laid out children-outermost
    (a permuted view of the GEMM output).
    """
    votes = torch.einsum("...ik,ikq->...iq", pose, linear_weight(weight, transform))
    return votes.unflatten(-1, (parents, pose_dim))


@dataclass
class LazyVotes:
    """What a routing needs to compute the votes of any window itself.

    - ``pose``: child poses ``[N, L, I, D_in]`` (windows already cut);
    - ``weight``: the vote transform's parameter, ``[I_w, J, s, s]`` (``"matrix"``) or
      ``[I_w, D_in, J*D]`` (``"linear"``);
    - ``weight_index``: None (child ``i`` uses weight row ``i``) or a LongTensor ``[I]``
      mapping each child to its weight row (weights shared over positions);
    - ``offsets``: None or ``[I, D]`` added to every vote of a child (coordinate addition).
    """

    pose: torch.Tensor
    weight: torch.Tensor
    transform: str = "matrix"
    weight_index: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    parents: int = 0  # 0: read from the weight
    pose_dim: int = 0  # 0: read from the weight
    # optional: ``pose`` as the layer holds it when weights are shared, ``[..., I / I_w, I_w, D_in]``;
    # materialize reads it so the reference path's autograd graph (hence the memory layout of
    # its gradients, hence their rounding) stays exactly what it was before lazy votes
    pose_by_row: torch.Tensor | None = None

    def __post_init__(self):
        if self.transform not in ("matrix", "linear"):
            raise ValueError(f"vote transform must be 'matrix' or 'linear', got {self.transform!r}")
        if self.transform == "matrix":
            self.parents = self.parents or self.weight.shape[1]
            self.pose_dim = self.pose_dim or self.weight.shape[-1] ** 2
        elif not (self.parents and self.pose_dim):
            raise ValueError("linear lazy votes need parents and pose_dim")

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """The shape the votes would have, ``(N, L, I, J, D)``."""
        n, length, i, _ = self.pose.shape
        return n, length, i, self.parents, self.pose_dim

    def per_child_weight(self) -> torch.Tensor:
        """The weight with one row per child, ``[I, ...]`` (a gather when weights are shared)."""
        return self.weight if self.weight_index is None else self.weight[self.weight_index]

    def materialize(self) -> torch.Tensor:
        """The votes ``[N, L, I, J, D]``: the same maths, and the same GEMM shapes, as the layers' ``VoteTransform``."""
        j, d = self.parents, self.pose_dim
        n, length, i, d_in = self.pose.shape
        if self.weight_index is not None and _tiles(self.weight_index, self.weight.shape[0]):
            # weights shared over positions (children = position x row): as ClassCaps always did, one
            # GEMM per row, offsets added before the children are flattened. The memory layout of the
            # result decides the GEMM layouts of the backward, hence its rounding: keep it.
            rows = self.weight.shape[0]
            per_row = self.pose_by_row if self.pose_by_row is not None else self.pose.reshape(n, length, -1, rows, d_in)
            votes = project(per_row, self.weight, self.transform, j, d)
            if self.offsets is not None:
                votes = votes + self.offsets.view(i // rows, rows, 1, d)
            return votes.reshape(n, length, i, j, d)
        votes = project(self.pose, self.per_child_weight(), self.transform, j, d)
        if self.offsets is not None:
            votes = votes + self.offsets[:, None, :]
        return votes


def _tiles(index: torch.Tensor, rows: int) -> bool:
    """True when ``index`` is ``0, 1, .., rows-1`` repeated (child ``i`` uses row ``i % rows``)."""
    if index.numel() % rows:
        return False
    expected = torch.arange(rows, device=index.device).repeat(index.numel() // rows)
    return bool(torch.equal(index, expected))


def tiled_index(children: int, rows: int, device=None) -> torch.Tensor:
    """The weight index of weights shared over positions: child ``i`` uses row ``i % rows``."""
    return torch.arange(rows, device=device).repeat(math.ceil(children / rows))[:children]
