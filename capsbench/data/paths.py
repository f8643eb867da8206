"""Where data sets and derived caches live, and the one-line "data set not found" error.

- Data root: ``data.root``, else ``$CAPSBENCH_DATA``, else ``~/.cache/capsbench/data``.
- Cache (normalisation statistics): ``$CAPSBENCH_CACHE``, else ``$XDG_CACHE_HOME/capsbench``,
  else ``~/.cache/capsbench``. Never inside a data root: roots are often read-only or shared
  (a cluster file system, a read-only copy), and root is a ``NON_RESULT_KEY`` anyway, so the
  cache key records the resolved root path instead.

Example::

    >>> data_root("/tmp/somewhere")
    PosixPath('/tmp/somewhere')
"""

from __future__ import annotations

import os
from pathlib import Path

from capsbench.errors import DataError

HOW_TO_GET = (
    "set data.download=true on a machine with internet, run `capsbench prepare SPEC`, or point data.root at a copy"
)


def data_root(root: str | os.PathLike | None) -> Path:
    """The folder a data set's files are looked for in (or downloaded to)."""
    if root is None or str(root) == "":
        root = os.environ.get("CAPSBENCH_DATA") or Path.home() / ".cache" / "capsbench" / "data"
    return Path(root).expanduser().absolute()


def cache_dir() -> Path:
    """The folder for derived files (statistics); created on first write, not here."""
    env = os.environ.get("CAPSBENCH_CACHE")
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return (base / "capsbench").absolute()


def not_found(dataset: str, root: Path, looked_for: str) -> DataError:
    """The error for absent data: names the data set, the path searched and how to get it."""
    return DataError(f"{dataset}: data not found under {root} (looked for {looked_for}); {HOW_TO_GET}")
