"""glibc malloc settings for CPU training with large routing tensors.

By default glibc serves every allocation above a (dynamic) threshold with a fresh ``mmap``
and returns it to the OS on free, so each new 100-300 MB vote tensor pays page faults on
first touch, many times per training step. Raising the mmap and trim thresholds keeps the
memory in the heap for reuse: the routing benchmark's step time drops by up to ~2x on CPU, for a
higher resident set (see benchmarks/results/). glibc reads these variables only at process
start, so ``capsbench`` re-executes itself once with them set. ``CAPSBENCH_MALLOC_TUNING=0``
turns this off; variables already set by the user are kept.
"""

from __future__ import annotations

import os
import sys

TUNING = {"MALLOC_MMAP_THRESHOLD_": "1000000000000", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


def enabled(env: dict | None = None) -> bool:
    env = os.environ if env is None else env
    return sys.platform.startswith("linux") and env.get("CAPSBENCH_MALLOC_TUNING", "1") != "0"


def tuned_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's) with the malloc settings added, for child processes."""
    env = dict(os.environ if env is None else env)
    return {**TUNING, **env} if enabled(env) else env


def reexec_if_untuned(argv: list[str]) -> None:
    """Replace this process by ``python -m capsbench argv`` with the settings, once."""
    if not enabled() or all(key in os.environ for key in TUNING):
        return
    env = tuned_env()
    env["CAPSBENCH_MALLOC_TUNING"] = env.get("CAPSBENCH_MALLOC_TUNING", "1")
    reexec(argv, env)


def reexec(argv: list[str], env: dict) -> None:
    """Replace this process by ``python -m capsbench argv`` with ``env`` added to its environment."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "capsbench", *argv], {**os.environ, **env})
