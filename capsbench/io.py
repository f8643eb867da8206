"""Atomic file writes: a temporary file in the same folder, fsync, then rename.

A reader never sees a half-written file, and an interrupted or failed write (a full
disk, a lost permission) leaves the previous version intact. Write failures the user can
fix (``WRITE_ERRNOS``) become one-line :class:`~capsbench.errors.OutputError` s naming the
file; :func:`writable_dir` checks an output folder before any work starts.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capsbench.errors import OutputError

# What an output folder can do wrong that the user can fix, and how to say it in a few words.
WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a parent of it is a file, not a folder",
    errno.EEXIST: "a file is in the way",
}


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise output_error(path, exc) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results on a shared cluster must be readable
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise output_error(path, exc) from None
        raise
    return path


def output_error(path: Path, exc: OSError) -> OutputError | OSError:
    """One line naming ``path`` for a failure the user can fix; anything else stays as it was."""
    if exc.errno not in WRITE_ERRNOS:
        return exc
    return OutputError(f"{path}: cannot write it: {WRITE_ERRNOS[exc.errno]}; nothing of it was changed")


def writable_dir(path: str | os.PathLike, key: str) -> Path:
    """Create ``path`` (and its parents) and check a file can be written in it; ``key`` names the setting.

    Raises OutputError with one line for a file in the way, a parent that is a file, a missing
    permission or a read-only or full file system, before any run starts.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{key} {path}: is a file; expected a folder (existing, or one that can be created)")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"{key} {path}: cannot create this folder: {blocker} is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # permissions, read-only mounts: a real write tells
            pass
    except OSError as exc:
        why = WRITE_ERRNOS.get(exc.errno, exc.strerror or type(exc).__name__)
        raise OutputError(f"{key} {path}: cannot create or write this folder: {why}") from None
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data), mode="wb")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Canonical JSON (sorted keys, two-space indent, trailing newline): diffable and byte-stable."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def append_line(path: str | os.PathLike, line: str) -> Path:
    """Append one line by rewriting the file atomically (files here are small: one line per epoch)."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    return write_text(path, old + line.rstrip("\n") + "\n")
