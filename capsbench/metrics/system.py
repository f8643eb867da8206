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
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux
