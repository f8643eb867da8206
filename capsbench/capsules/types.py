"""The capsule tensor pair every layer passes on.

Contract (channels-first, like every PyTorch conv):
- ``pose``: ``[N, types, pose_dim, H, W]``; pose_dim 16 is a flattened 4x4 matrix.
- ``activation``: ``[N, types, H, W]`` in [0, 1].
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Capsules(NamedTuple):
    pose: torch.Tensor
    activation: torch.Tensor

    @property
    def types(self) -> int:
        return self.pose.shape[1]

    @property
    def pose_dim(self) -> int:
        return self.pose.shape[2]

    @property
    def spatial(self) -> tuple[int, int]:
        return tuple(self.pose.shape[-2:])

    def check(self) -> Capsules:
        """Raise ValueError when the two tensors do not describe the same capsules."""
        p, a = self.pose, self.activation
        if p.dim() != 5 or a.dim() != 4 or p.shape[:2] != a.shape[:2] or p.shape[-2:] != a.shape[-2:]:
            raise ValueError(
                f"Capsules need pose [N, T, D, H, W] and activation [N, T, H, W], "
                f"got {tuple(p.shape)} and {tuple(a.shape)}"
            )
        return self
