"""Numerics modes: ``native`` (fastest kernels for this CPU) or ``portable`` (the same bits on every x86 CPU).

Why: the same run on another x86 CPU gives other numbers in ``native`` mode. Re-running the
committed paper-mini record capsnet-self / mnist / depth 1 on an AVX-512 machine gave 85.5%
test accuracy against the committed 85.9% (issue 15): ATen picks vectorised kernels (and Sleef
transcendental functions) by the CPU's instruction set, MKL picks GEMM code paths by CPU, oneDNN
JIT-compiles convolutions for the CPU it finds, NNPACK (ATen's convolution once oneDNN is off, for
batches of 16 or more) sizes its blocks from the CPU's caches, and the number of threads changes
how reductions are split. ``portable`` pins every one of these:

- ``ATEN_CPU_CAPABILITY=default``: ATen's non-vectorised kernels, the same code on every x86 CPU;
- ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility, one code path for all CPUs;
- ``torch.backends.mkldnn`` off: no oneDNN (its kernels are generated for the CPU found at run time);
- ``torch.backends.nnpack`` off: ATen's own im2col + GEMM convolution. NNPACK dispatches through cpuinfo
  and sizes its blocks from the cache sizes it reports, properties of the CPU model that no variable
  above touches. It was in the path of every portable run until 2026-12-03, after every ci record had
  failed ``verify`` on an Intel Xeon by float32 rounding (benchmarks/README.md, "Numerics modes");
- one intra-op thread, and deterministic algorithms.

What it does not pin: the software (torch, MKL, glibc's libm). Records state both the mode and
the software (``capsbench.env.environment``), so a verify mismatch on other software is read as
such. ATen and MKL read their variables when the process starts, so they cannot be switched
inside a running process: ``capsbench run`` re-executes itself with them (see ``cli.cmd_run``),
and a run whose process lacks them stops with a message naming them (``check_process``).

Measured cost and cross-ISA evidence: benchmarks/README.md ("Numerics modes").

Example::

    env = process_env("portable")           # {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
    with applied("portable"):               # mkldnn and nnpack off, one thread, for the duration of a run
        ...
"""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache

from capsbench.errors import UserError

MODES = ("native", "portable")
# Variables read at process start; portable needs exactly these values.
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}


def process_env(mode: str) -> dict[str, str]:
    """The environment variables a process running ``mode`` must start with."""
    return dict(PORTABLE_ENV) if mode == "portable" else {}


def missing_env(mode: str, env: dict | None = None) -> dict[str, str]:
    """The variables of ``mode`` that ``env`` (default: this process's) lacks or sets otherwise."""
    env = os.environ if env is None else env
    return {k: v for k, v in process_env(mode).items() if env.get(k) != v}


def check_process(mode: str) -> None:
    """Raise a UserError when this process cannot run ``mode`` (it started without its variables)."""
    if mode not in MODES:
        raise UserError(f"numerics: expected one of {', '.join(MODES)}, got {mode!r}")
    missing = missing_env(mode)
    if missing:
        setting = " ".join(f"{k}={v}" for k, v in missing.items())
        raise UserError(
            f"numerics: {mode} needs {setting} set before the process starts (ATen and MKL read them once); "
            "`capsbench run` sets them itself, or start python with them"
        )
    if mode == "portable":
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
        if capability != "DEFAULT":
            raise UserError(
                f"numerics: portable needs ATen's default CPU kernels but this process already uses {capability}; "
                "set ATEN_CPU_CAPABILITY=default before torch is imported"
            )


@contextlib.contextmanager
def applied(mode: str):
    """The in-process part of ``mode`` for the duration of a run; the previous settings come back after."""
    import torch

    check_process(mode)
    if mode != "portable":
        yield
        return
    saved = (torch.backends.mkldnn.enabled, torch.backends.nnpack.set_flags(False)[0], torch.get_num_threads())
    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = saved[0]
        torch.backends.nnpack.set_flags(saved[1])
        torch.set_num_threads(saved[2])


def _nnpack_enabled() -> bool:
    """Whether ATen may route convolutions to NNPACK (torch.backends.nnpack exposes a setter and no getter)."""
    import torch

    return bool(torch._C._get_nnpack_enabled())


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``, else 'unknown'."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe() -> dict:
    """What the numbers of this process depend on: recorded in every run's environment."""
    import torch

    return {
        "mode": "portable" if not missing_env("portable") and torch.backends.cpu.get_cpu_capability() == "DEFAULT"
        and not torch.backends.mkldnn.enabled and not _nnpack_enabled()
        and torch.get_num_threads() == 1 else "native",
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "mkldnn": bool(torch.backends.mkldnn.enabled),
        "nnpack": _nnpack_enabled(),
        "threads": torch.get_num_threads(),
    }
