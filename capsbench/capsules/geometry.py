"""Windows of child capsules: cut a capsule grid into windows and map windows back.

A capsule layer with kernel K sees, at every output position ``l``, the ``I = T*K*K``
children of its window. Children are numbered ``i = t*K*K + kh*K + kw`` (type outer,
offset in the window inner): the channel order of ``F.unfold``, so ``F.fold`` can sum
a per-(window, child) tensor back onto the child grid.

Padding: a window that hangs over the border holds padded children with activation 0
and pose 0 (so their votes are 0 and any routing that weights by activation ignores
them). ``Geometry.child_sum`` returns 0 in padded slots (fold drops them, unfold puts
zeros back), so ``geometry.child_sum(ones) > 0`` marks the real children, and for a
real child it counts the windows (parents positions) that receive it.

Example::

    >>> import torch
    >>> from capsbench.capsules.types import Capsules
    >>> caps = Capsules(torch.randn(2, 3, 16, 5, 5), torch.rand(2, 3, 5, 5))
    >>> pose, act, out_hw = unfold_capsules(caps, 3, 1, 1)
    >>> pose.shape, act.shape, out_hw
    (torch.Size([2, 25, 27, 16]), torch.Size([2, 25, 27]), (5, 5))
    >>> geo = window_geometry((5, 5), 3, 1, 1)
    >>> int(geo.child_sum(torch.ones(2, 25, 27)).max())  # a centre child sits in 9 windows
    9
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from capsbench.capsules.routing.base import Geometry
from capsbench.capsules.types import Capsules
from capsbench.config import COORD_ADD_STYLES


def _pair(x) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[1]))


def window_hw(in_hw, kernel, stride=1, padding=0) -> tuple[int, int]:
    """Output grid size of a window layer (the conv formula); ValueError when empty."""
    (h, w), (kh, kw), (sh, sw), (ph, pw) = _pair(in_hw), _pair(kernel), _pair(stride), _pair(padding)
    out = ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
    if min(out) < 1:
        raise ValueError(f"a {kh}x{kw} capsule window (stride {sh}, padding {ph}) does not fit a {h}x{w} capsule grid")
    return out


def unfold_capsules(caps: Capsules, kernel, stride=1, padding=0):
    """Cut ``caps`` into windows: child poses ``[N, L, I, D]``, activations ``[N, L, I]``, ``(H_out, W_out)``.

    One ``F.unfold`` per tensor, no loop over positions. The pose copy is K*K times the
    input: still smaller than the votes (J times larger again).
    """
    pose, act = caps
    n, t, d, h, w = pose.shape
    out_hw = window_hw((h, w), kernel, stride, padding)
    kk = _pair(kernel)[0] * _pair(kernel)[1]
    cols = F.unfold(pose.reshape(n, t * d, h, w), kernel, padding=padding, stride=stride)  # [N, T*D*KK, L]
    length = cols.shape[-1]
    # [N, T, D, KK, L] -> [N, L, T, KK, D] -> [N, L, I=T*KK, D]
    child_pose = cols.view(n, t, d, kk, length).permute(0, 4, 1, 3, 2).reshape(n, length, t * kk, d)
    child_act = F.unfold(act, kernel, padding=padding, stride=stride).transpose(1, 2)  # [N, L, T*KK]
    return child_pose, child_act, out_hw


def window_geometry(in_hw, kernel, stride=1, padding=0) -> Geometry:
    """The ``Geometry`` of a window layer: ``child_sum`` sums over every window holding a child.

    ``child_sum(x)`` takes ``[N, L, I, *rest]`` (children numbered as in ``unfold_capsules``)
    and returns the same shape: fold the windows back onto the grid (summing where they
    overlap), then unfold again. Padded slots come back as 0.
    """
    in_hw, kernel, stride, padding = _pair(in_hw), _pair(kernel), _pair(stride), _pair(padding)
    out_hw = window_hw(in_hw, kernel, stride, padding)
    if padding == (0, 0) and stride[0] >= kernel[0] and stride[1] >= kernel[1]:
        return Geometry(child_sum=lambda x: x, out_hw=out_hw)  # no child is in two windows

    def child_sum(x: torch.Tensor) -> torch.Tensor:
        n, length, i = x.shape[:3]
        rest = x.shape[3:]
        r = x[0, 0, 0].numel()
        # [N, L, I, R] -> [N, R, I, L] -> [N*R, I, L]: fold wants channels (type, offset) x positions
        cols = x.reshape(n, length, i, r).permute(0, 3, 2, 1).reshape(n * r, i, length)
        grid = F.fold(cols, in_hw, kernel, padding=padding, stride=stride)
        back = F.unfold(grid, kernel, padding=padding, stride=stride)  # [N*R, I, L]
        return back.reshape(n, r, i, length).permute(0, 3, 2, 1).reshape(n, length, i, *rest)

    slots: dict[tuple[int, torch.device], torch.Tensor] = {}

    def child_max(x: torch.Tensor) -> torch.Tensor:
        n, length, i = x.shape
        key = (i, x.device)
        if key not in slots:  # the grid cell of every (window, child) slot, padding -> an extra last cell
            cells = in_hw[0] * in_hw[1] * (i // (kernel[0] * kernel[1]))
            grid = torch.arange(1, cells + 1, dtype=torch.float64, device=x.device).view(1, -1, *in_hw)
            index = F.unfold(grid, kernel, padding=padding, stride=stride)[0].t().round().long() - 1  # [L, I]
            slots[key] = torch.where(index < 0, cells, index).reshape(-1)
        index = slots[key]
        cells = int(index.max()) + 1
        flat = x.reshape(n, length * i)
        lowest = -torch.inf if x.is_floating_point() else torch.iinfo(x.dtype).min
        best = flat.new_full((n, cells), lowest).scatter_reduce(1, index.expand(n, -1), flat, "amax")
        return best.gather(1, index.expand(n, -1)).view(n, length, i)

    return Geometry(child_sum=child_sum, out_hw=out_hw, child_max=child_max)


def coordinate_offsets(hw, pose_dim: int, scale: float = 1.0, device=None, dtype=None, style: str = "hinton"):
    """Coordinate addition: ``[H*W, pose_dim]`` offsets for shared-weight votes (styles: ``COORD_ADD_STYLES``).

    ``"hinton"`` (Hinton et al. 2018): the scaled centre ``((row + 0.5) / H, (col + 0.5) / W) * scale``
    of every position goes into the first two entries of the right-hand column of a square
    pose matrix (the translation part: entries 3 and 7 of a 4x4 pose), or into entries 0 and
    1 of a pose that is not a square. ``"yl1993"`` (the EM port the paper follows):
    ``(row / H, col / W) * scale`` into entries 0 and 1. ``"none"``: zeros.
    """
    if style not in COORD_ADD_STYLES:
        raise ValueError(f"coordinate addition must be one of {COORD_ADD_STYLES}, got {style!r}")
    h, w = _pair(hw)
    side = int(round(pose_dim**0.5))
    if style == "hinton" and side * side == pose_dim and side >= 2:
        row_entry, col_entry = side - 1, 2 * side - 1
    else:
        row_entry, col_entry = 0, min(1, pose_dim - 1)
    centre = 0.5 if style == "hinton" else 0.0
    rows = (torch.arange(h, device=device, dtype=dtype) + centre) / h * scale
    cols = (torch.arange(w, device=device, dtype=dtype) + centre) / w * scale
    offsets = torch.zeros(h, w, pose_dim, device=device, dtype=dtype)
    if style != "none":
        offsets[..., row_entry] += rows[:, None]
        offsets[..., col_entry] += cols[None, :]
    return offsets.reshape(h * w, pose_dim)
