"""Peak memory and device synchronisation, for per-epoch telemetry."""

from __future__ import annotations

import resource
import sys

import torch


def is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels, so wall-clock timings measure the work itself."""
    if is_cuda(device):
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device | str) -> None:
    if is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device | str) -> float:
    """CUDA: max memory allocated since the last reset. CPU: the process's peak RSS.

    The RSS peak cannot be reset: it covers the whole process so far.
    """
    if is_cuda(device):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return process_peak_rss_mb()


def process_peak_rss_mb() -> float:
    """Peak resident set size of this process's own address space so far, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``. Not ``getrusage``'s ``ru_maxrss``: the kernel carries
    that across ``fork`` and ``exec``, so a child started by a parent that had already imported torch
    (``capsbench bench`` measuring each run in a fresh process) would report at least the parent's
    peak. Elsewhere ``ru_maxrss`` (bytes on macOS, KiB on Linux and the BSDs).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
