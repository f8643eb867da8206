"""Compile ``em_window.c`` (and ``vb_window.c``: :func:`open_library`) at first use with the system C
compiler and load it with ctypes.

No install step: the first call compiles the kernel for one dtype into
``<cache_dir>/native/<source name>-<key>-<dtype>.so`` (``cache_dir``: ``$CAPSBENCH_CACHE``, else
``~/.cache/capsbench``), keyed by the source, the flags and the compiler's ``--version``
line, so an edited source or another compiler builds anew. The build writes a temporary
file and renames it into place (atomic), so parallel test workers never load a half-written
library. Where there is no compiler or the build fails, :func:`load` returns None after one
warning, and the routing runs its PyTorch paths.

Compiler: ``$CAPSBENCH_CC``, else ``cc``. Flags (why): ``-O3`` without ``-march``, so the
library uses only the x86-64 baseline (SSE2) and a record does not depend on the build
machine's instruction set; ``-ffp-contract=off``, so no fused multiply-add changes rounding
between compilers or machines; no ``-ffast-math``, so every sum over children keeps its order.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from capsbench.data.paths import cache_dir

SOURCE = Path(__file__).with_name("em_window.c")
FLAGS = ("-O3", "-std=c11", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno")
TYPES = {torch.float32: ("float", "f32"), torch.float64: ("double", "f64")}

_loaded: dict[torch.dtype, object] = {}  # dtype -> the library's functions, or None (build failed)
_warned = False


def compiler() -> str:
    return os.environ.get("CAPSBENCH_CC") or "cc"


def _compiler_version(cc: str) -> str:
    out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.splitlines()[0] if out.stdout else ""


def _build(dtype: torch.dtype, source: Path | None = None) -> Path:
    """The cached library of ``source`` (default :data:`SOURCE`) for ``dtype``, compiled when absent; raises
    when it cannot be built."""
    source = source or SOURCE
    cc = compiler()
    ctype, suffix = TYPES[dtype]
    flags = (*FLAGS, f"-DREAL={ctype}", f"-DSUFFIX={suffix}")
    key = hashlib.sha256(source.read_bytes() + "\0".join((*flags, _compiler_version(cc))).encode()).hexdigest()[:16]
    folder = cache_dir() / "native"
    target = folder / f"{source.stem}-{key}-{suffix}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".so.tmp")
    os.close(fd)
    try:
        subprocess.run([cc, *flags, str(source), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=300,
                       check=True)  # fmt: skip
        os.replace(tmp, target)  # atomic: another worker's identical build may land first, either is fine
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _bind(path: Path, suffix: str):
    lib = ctypes.CDLL(str(path))
    p, i, r = ctypes.c_void_p, ctypes.c_int, ctypes.c_double if suffix == "f64" else ctypes.c_float
    head = [ctypes.c_long, ctypes.c_long, i, i, i, *[p] * 7, r, r]  # window range, I, J, T, inputs, min_var, cost_div
    fwd, bwd, total = (getattr(lib, f"{name}_{suffix}") for name in ("em_forward", "em_backward", "sum_blocks"))
    fwd.argtypes = [*head, p, p, p]
    bwd.argtypes = [*head, *[p] * 7]
    total.argtypes, total.restype = [ctypes.c_long, ctypes.c_long, p, p], None
    return fwd, bwd, total


def load(dtype: torch.dtype):
    """``(forward, backward, sum_blocks)`` ctypes functions for ``dtype``, or None (one warning per process)."""
    global _warned
    if dtype not in TYPES:
        return None
    if dtype not in _loaded:
        try:
            _loaded[dtype] = _bind(_build(dtype), TYPES[dtype][1])
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


_opened: dict[tuple[str, torch.dtype], ctypes.CDLL | None] = {}  # (source name, dtype) -> library or None
_warned_sources: set[str] = set()


def open_library(source: Path, dtype: torch.dtype, what: str) -> ctypes.CDLL | None:
    """Another kernel source built like :data:`SOURCE`: its library for ``dtype``, or None after one warning
    per source and process that names ``what`` (the kernel) and says its PyTorch paths run instead."""
    if dtype not in TYPES:
        return None
    key = (source.name, dtype)
    if key not in _opened:
        try:
            _opened[key] = ctypes.CDLL(str(_build(dtype, source)))
        except (OSError, subprocess.SubprocessError) as err:
            _opened[key] = None
            if source.name not in _warned_sources:
                _warned_sources.add(source.name)
                detail = (getattr(err, "stderr", None) or str(err)).strip()
                first = detail.splitlines()[0] if detail else type(err).__name__
                message = f"capsbench: {what} could not be built with {compiler()!r} ({first}); its PyTorch paths run"
                warnings.warn(message, RuntimeWarning, stacklevel=2)
    return _opened[key]


def forget() -> None:
    """Drop what was loaded or failed (tests point ``$CAPSBENCH_CC`` elsewhere, then load again)."""
    global _warned
    _loaded.clear()
    _opened.clear()
    _warned_sources.clear()
    _warned = False
