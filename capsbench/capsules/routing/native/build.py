"""Compile the CPU kernels (``em_window.c``, ``vb_window.c``) at first use with the system C compiler and
load them with ctypes: one machinery for every source x dtype x instruction set.

No install step: the first call compiles a source for one dtype and instruction set into
``<cache_dir>/native/<source name>-<key>-<dtype>-<isa>.so`` (``cache_dir``: ``$CAPSBENCH_CACHE``, else
``~/.cache/capsbench``), keyed by the source, the flags and the compiler's ``--version``
line, so an edited source or another compiler builds anew. The build writes a temporary
file and renames it into place (atomic), so parallel test workers never load a half-written
library. Where there is no compiler or the build fails, :func:`open_library` (and :func:`load`, EM's
functions) return None after one warning per source, and the routing runs its PyTorch paths.

Compiler: ``$CAPSBENCH_CC``, else ``cc``. Flags (why): ``-O3`` without ``-march``;
``-ffp-contract=off``, so no fused multiply-add changes rounding between compilers or machines;
no ``-ffast-math``, so every sum keeps its order.

Instruction sets: each kernel's vectors have lanes that never mix except in sums of one fixed order,
so its builds for 16-byte (SSE2, the x86-64 baseline; any other machine's generic vectors), 32-byte
(``-mavx2``) and 64-byte (``-mavx512f``) vectors give the same bits (tests/test_cpu_em_kernel.py and
tests/test_cpu_vb_kernel.py force each). :func:`open_library` builds the baseline, asks it (through
``__builtin_cpu_supports``; every source exports ``widest_vector_bytes`` and ``vector_bytes``) for the
widest that this CPU and OS run, and uses that one; ``$CAPSBENCH_CPU_ISA`` (``sse2``, ``avx2``,
``avx512``) forces one for every kernel. A wider build that fails falls back to the baseline.
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
HEADER = Path(__file__).with_name("vector_width.h")  # included by every kernel source
FLAGS = ("-O3", "-std=c11", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno")
TYPES = {torch.float32: ("float", "f32"), torch.float64: ("double", "f64")}
ISA_SWITCH = "CAPSBENCH_CPU_ISA"  # forces one instruction set for every kernel
ISAS = {"sse2": (16, ()), "avx2": (32, ("-mavx2",)), "avx512": (64, ("-mavx512f",))}  # name -> vector bytes, flags
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


class Library(NamedTuple):
    """One source's library for one dtype, and the instruction set it was built for."""

    cdll: ctypes.CDLL
    suffix: str  # "f32" or "f64": every exported name ends in it
    isa: str  # "sse2", "avx2", "avx512", or "generic" (16-byte vectors on a machine other than x86)

    def function(self, name: str):
        return getattr(self.cdll, f"{name}_{self.suffix}")

    def widest_vector_bytes(self) -> int:
        """What the CPU and OS run: 64, 32 or 16."""
        return self.function("widest_vector_bytes")()


class Kernel(NamedTuple):
    """The EM library's functions for one dtype, and the instruction set it was built for."""

    forward: Any
    backward: Any
    sum_blocks: Any
    exp_values: Any
    state_size: Any  # (I, J, T) -> values per window the forward keeps for the backward
    widest_vector_bytes: Any  # what the CPU and OS run: 64, 32 or 16
    isa: str  # "sse2", "avx2", "avx512", or "generic" (16-byte vectors on a machine other than x86)


_opened: dict[tuple[str, torch.dtype], Library | None] = {}  # (source name, dtype) -> library, or None (failed)
_loaded: dict[torch.dtype, Kernel | None] = {}  # dtype -> EM's functions, or None
_warned_sources: set[str] = set()


def compiler() -> str:
    return os.environ.get("CAPSBENCH_CC") or "cc"


def _compiler_version(cc: str) -> str:
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.splitlines()[0] if out.stdout else ""


def _build(dtype: torch.dtype, isa: str = "sse2", source: Path | None = None) -> Path:
    """The cached library of ``source`` (default :data:`SOURCE`) for ``dtype`` and ``isa``, compiled when
    absent; raises when it cannot be built."""
    source = source or SOURCE
    cc = compiler()
    ctype, suffix = TYPES[dtype]
    vector_bytes, isa_flags = ISAS[isa]
    flags = (*FLAGS, *isa_flags, f"-DREAL={ctype}", f"-DSUFFIX={suffix}", f"-DVBYTES={vector_bytes}")
    text = source.read_bytes() + HEADER.read_bytes()  # the source and the header every source includes
    key = hashlib.sha256(text + "\0".join((*flags, _compiler_version(cc))).encode()).hexdigest()[:16]
    folder = cache_dir() / "native"
    target = folder / f"{source.stem}-{key}-{suffix}-{isa}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".so.tmp")
    os.close(fd)
    try:
        command = [cc, *flags, f"-I{HEADER.parent}", str(source), "-o", tmp, "-lm"]  # -I: an edited copy elsewhere
        subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
        os.replace(tmp, target)  # atomic: another worker's identical build may land first, either is fine
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _open(source: Path, dtype: torch.dtype, isa: str) -> Library:
    path = _build(dtype, isa, source)
    lib = Library(ctypes.CDLL(str(path)), TYPES[dtype][1], isa if X86 else "generic")
    for name in ("vector_bytes", "widest_vector_bytes"):
        lib.function(name).argtypes = []
    if lib.function("vector_bytes")() != ISAS[isa][0]:  # a stale or foreign file under the cache key
        raise OSError(f"{path} was built for {lib.function('vector_bytes')()}-byte vectors, not {isa}")
    return lib


def widest_isa(baseline: Library | Kernel) -> str:
    """The widest instruction set this CPU and OS run, as the baseline library sees it."""
    if not X86:
        return "sse2"  # the 16-byte generic build: the name only picks the flags (none)
    return {64: "avx512", 32: "avx2"}.get(baseline.widest_vector_bytes(), "sse2")


def _dispatch(source: Path, dtype: torch.dtype) -> Library:
    """The baseline build, then the chosen wider one (``$CAPSBENCH_CPU_ISA``, else the widest this CPU runs)."""
    baseline = _open(source, dtype, "sse2")
    wanted = os.environ.get(ISA_SWITCH) or widest_isa(baseline)
    if wanted not in ISAS:
        raise UserError(f"{ISA_SWITCH} must be one of {', '.join(ISAS)}, got {wanted!r}")
    if wanted == "sse2" or not X86:
        return baseline
    try:
        return _open(source, dtype, wanted)
    except (OSError, subprocess.SubprocessError):  # an old compiler without that target: the baseline
        return baseline


def open_library(source: Path, dtype: torch.dtype, what: str) -> Library | None:
    """``source``'s library for ``dtype`` at the chosen instruction set, or None after one warning per
    source and process that names ``what`` (the kernel) and says its PyTorch paths run instead."""
    if dtype not in TYPES:
        return None
    key = (source.name, dtype)
    if key not in _opened:
        try:
            _opened[key] = _dispatch(source, dtype)
        except (OSError, subprocess.SubprocessError) as err:
            _opened[key] = None
            if source.name not in _warned_sources:
                _warned_sources.add(source.name)
                detail = (getattr(err, "stderr", None) or str(err)).strip()
                first = detail.splitlines()[0] if detail else type(err).__name__
                message = f"capsbench: {what} could not be built with {compiler()!r} ({first}); its PyTorch paths run"
                warnings.warn(message, RuntimeWarning, stacklevel=2)
    return _opened[key]


def _bind(lib: Library) -> Kernel:
    p, i, r = ctypes.c_void_p, ctypes.c_int, ctypes.c_double if lib.suffix == "f64" else ctypes.c_float
    # window range, I, J, T, inputs, min_var, cost_div, variant flags
    head = [ctypes.c_long, ctypes.c_long, i, i, i, *[p] * 7, r, r, i]
    names = ("em_forward", "em_backward", "sum_blocks", "exp_values", "state_size", "widest_vector_bytes")
    fwd, bwd, total, exp_values, state_size, widest = map(lib.function, names)
    fwd.argtypes = [*head, *[p] * 5]  # outputs: pose, activation, coefficients, state (the backward's), terms
    bwd.argtypes = [*head, *[p] * 8]  # output gradients, input gradients, state
    state_size.argtypes, state_size.restype = [i, i, i], ctypes.c_long
    total.argtypes, total.restype = [ctypes.c_long, ctypes.c_long, p, p], None
    exp_values.argtypes, exp_values.restype = [ctypes.c_long, p, p], None
    return Kernel(fwd, bwd, total, exp_values, state_size, widest, lib.isa)


def load(dtype: torch.dtype) -> Kernel | None:
    """The EM kernel's ctypes functions for ``dtype``, or None (one warning per process)."""
    if dtype not in _loaded:
        lib = open_library(SOURCE, dtype, "the compiled CPU EM kernel")
        _loaded[dtype] = _bind(lib) if lib is not None else None
    return _loaded[dtype]


def forget() -> None:
    """Drop what was loaded or failed (tests point ``$CAPSBENCH_CC`` elsewhere, then load again)."""
    _loaded.clear()
    _opened.clear()
    _warned_sources.clear()
