"""Compile ``em_window.c`` at first use with the system C compiler and load it with ctypes.

No install step: the first call compiles the kernel for one dtype into
``<cache_dir>/native/em_window-<key>-<dtype>.so`` (``cache_dir``: ``$CAPSBENCH_CACHE``, else
``~/.cache/capsbench``), keyed by the source, the flags and the compiler's ``--version``
line, so an edited source or another compiler builds anew. The build writes a temporary
file and renames it into place (atomic), so parallel test workers never load a half-written
library. Where there is no compiler or the build fails, :func:`load` returns None after one
warning, and the routing runs its PyTorch paths.

Compiler: ``$CAPSBENCH_CC``, else ``cc``. Flags (why): ``-O3`` without ``-march``;
``-ffp-contract=off``, so no fused multiply-add changes rounding between compilers or machines;
no ``-ffast-math``, so every sum keeps its order.

Instruction sets: the kernel's vectors run across parent types, lane by lane, with one fixed order
for the few sums across lanes, so its builds for 16-byte (SSE2, the x86-64 baseline; any other
machine's generic vectors), 32-byte (``-mavx2``) and 64-byte (``-mavx512f``) vectors give the same
bits (tests/test_cpu_em_kernel.py forces each). :func:`load` builds the baseline, asks it (through
``__builtin_cpu_supports``) for the widest that this CPU and OS run, and uses that one;
``$CAPSBENCH_CPU_EM_ISA`` (``sse2``, ``avx2``, ``avx512``) forces one. A wider build that fails
falls back to the baseline.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch

from capsbench.data.paths import cache_dir
from capsbench.errors import UserError

SOURCE = Path(__file__).with_name("em_window.c")
FLAGS = ("-O3", "-std=c11", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno")
TYPES = {torch.float32: ("float", "f32"), torch.float64: ("double", "f64")}
ISA_SWITCH = "CAPSBENCH_CPU_EM_ISA"
ISAS = {"sse2": (16, ()), "avx2": (32, ("-mavx2",)), "avx512": (64, ("-mavx512f",))}  # name -> vector bytes, flags
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


class Kernel(NamedTuple):
    """The library's functions for one dtype, and the instruction set it was built for."""

    forward: Any
    backward: Any
    sum_blocks: Any
    exp_values: Any
    state_size: Any  # (I, J, T) -> values per window the forward keeps for the backward
    widest_vector_bytes: Any  # what the CPU and OS run: 64, 32 or 16
    isa: str  # "sse2", "avx2", "avx512", or "generic" (16-byte vectors on a machine other than x86)


_loaded: dict[torch.dtype, Kernel | None] = {}  # dtype -> the library's functions, or None (build failed)
_warned = False


def compiler() -> str:
    return os.environ.get("CAPSBENCH_CC") or "cc"


def _compiler_version(cc: str) -> str:
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.splitlines()[0] if out.stdout else ""


def _build(dtype: torch.dtype, isa: str = "sse2") -> Path:
    """The cached library for ``dtype`` and ``isa``, compiled when absent; raises when it cannot be built."""
    cc = compiler()
    ctype, suffix = TYPES[dtype]
    vector_bytes, isa_flags = ISAS[isa]
    flags = (*FLAGS, *isa_flags, f"-DREAL={ctype}", f"-DSUFFIX={suffix}", f"-DVBYTES={vector_bytes}")
    key = hashlib.sha256(SOURCE.read_bytes() + "\0".join((*flags, _compiler_version(cc))).encode()).hexdigest()[:16]
    folder = cache_dir() / "native"
    target = folder / f"em_window-{key}-{suffix}-{isa}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".so.tmp")
    os.close(fd)
    try:
        subprocess.run([cc, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=300,
                       check=True)  # fmt: skip
        os.replace(tmp, target)  # atomic: another worker's identical build may land first, either is fine
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _bind(path: Path, suffix: str, isa: str) -> Kernel:
    lib = ctypes.CDLL(str(path))
    p, i, r = ctypes.c_void_p, ctypes.c_int, ctypes.c_double if suffix == "f64" else ctypes.c_float
    # window range, I, J, T, inputs, min_var, cost_div, variant flags
    head = [ctypes.c_long, ctypes.c_long, i, i, i, *[p] * 7, r, r, i]
    names = ("em_forward", "em_backward", "sum_blocks", "exp_values", "state_size", "vector_bytes",
             "widest_vector_bytes")  # fmt: skip
    fwd, bwd, total, exp_values, state_size, vector_bytes, widest = (getattr(lib, f"{n}_{suffix}") for n in names)
    fwd.argtypes = [*head, *[p] * 4]  # outputs: pose, activation, coefficients, state (the backward's)
    bwd.argtypes = [*head, *[p] * 8]  # output gradients, input gradients, state
    state_size.argtypes, state_size.restype = [i, i, i], ctypes.c_long
    total.argtypes, total.restype = [ctypes.c_long, ctypes.c_long, p, p], None
    exp_values.argtypes, exp_values.restype = [ctypes.c_long, p, p], None
    vector_bytes.argtypes = widest.argtypes = []
    if vector_bytes() != ISAS[isa][0]:  # a stale or foreign file under the cache key: load() warns, PyTorch runs
        raise OSError(f"{path} was built for {vector_bytes()}-byte vectors, not {isa}")
    return Kernel(fwd, bwd, total, exp_values, state_size, widest, isa if X86 else "generic")


def widest_isa(baseline: Kernel) -> str:
    """The widest instruction set this CPU and OS run, as the baseline library sees it."""
    if not X86:
        return "sse2"  # the 16-byte generic build: the name only picks the flags (none)
    return {64: "avx512", 32: "avx2"}.get(baseline.widest_vector_bytes(), "sse2")


def _load(dtype: torch.dtype) -> Kernel:
    """The baseline build, then the chosen wider one (``$CAPSBENCH_CPU_EM_ISA``, else the widest this CPU runs)."""
    suffix = TYPES[dtype][1]
    baseline = _bind(_build(dtype), suffix, "sse2")
    wanted = os.environ.get(ISA_SWITCH) or widest_isa(baseline)
    if wanted not in ISAS:
        raise UserError(f"{ISA_SWITCH} must be one of {', '.join(ISAS)}, got {wanted!r}")
    if wanted == "sse2" or not X86:
        return baseline
    try:
        return _bind(_build(dtype, wanted), suffix, wanted)
    except (OSError, subprocess.SubprocessError):  # an old compiler without that target: the baseline
        return baseline


def load(dtype: torch.dtype) -> Kernel | None:
    """The kernel's ctypes functions for ``dtype``, or None (one warning per process)."""
    global _warned
    if dtype not in TYPES:
        return None
    if dtype not in _loaded:
        try:
            _loaded[dtype] = _load(dtype)
        except (OSError, subprocess.SubprocessError) as err:
            _loaded[dtype] = None
            if not _warned:
                _warned = True
                detail = getattr(err, "stderr", None) or str(err)
                first = detail.strip().splitlines()[0] if detail.strip() else type(err).__name__
                warnings.warn(
                    f"capsbench: the compiled CPU EM kernel could not be built with {compiler()!r} ({first}); "
                    "EM routing runs its PyTorch paths",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return _loaded[dtype]


def forget() -> None:
    """Drop what was loaded or failed (tests point ``$CAPSBENCH_CC`` elsewhere, then load again)."""
    global _warned
    _loaded.clear()
    _warned = False
