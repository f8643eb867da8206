"""How the CPU kernels (``cpu_em``, ``cpu_vb``) cut windows into blocks and run them on threads.

Windows are cut into blocks whose size depends only on the number of windows (never on the
thread count); blocks run on ``torch.get_num_threads()`` Python threads (ctypes releases the GIL
during a call). A kernel writes per-block partials of anything summed over windows (weight
gradients), which the caller sums in block order, so every result is bit-identical for any
number of threads.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch

MAX_BLOCKS = 64  # partial weight gradients kept: at most 64 x [I, J, 16]
MIN_BLOCK = 16  # windows per block at least (per-call overhead ~ tens of microseconds)

_pools: dict[int, ThreadPoolExecutor] = {}


def block_size(windows: int) -> int:
    """Windows per block: a function of the window count only, so partial sums never depend on threads."""
    return max(MIN_BLOCK, math.ceil(windows / MAX_BLOCKS))


def blocks(windows: int) -> list[tuple[int, int]]:
    size = block_size(windows)
    return [(start, min(start + size, windows)) for start in range(0, windows, size)]


def run_blocks(call, cut: list[tuple[int, int]], what: str) -> None:
    """``call(k, start, stop)`` for every block, on up to ``torch.get_num_threads()`` threads; a non-zero
    return from any call (the C side could not allocate) raises, naming ``what`` (the kernel)."""
    threads = min(torch.get_num_threads(), len(cut))
    if threads <= 1:
        codes = [call(k, *b) for k, b in enumerate(cut)]
    else:
        pool = _pools.get(threads) or _pools.setdefault(threads, ThreadPoolExecutor(threads, "capsbench-kernel"))
        codes = list(pool.map(lambda kb: call(kb[0], *kb[1]), enumerate(cut)))
    if any(codes):
        raise MemoryError(f"capsbench: the {what} could not allocate its per-window buffers")


def ptr(t: torch.Tensor | None):
    """The address ctypes passes for a tensor, or NULL."""
    return None if t is None else t.data_ptr()
