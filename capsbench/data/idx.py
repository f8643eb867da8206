"""A small reader for IDX files (the MNIST format), plain or gzip-compressed.

Layout: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per
dimension, then the data in big-endian C order. Reading the gzip directly means a read-only
copy of the ``.gz`` files (whose md5s differ from torchvision's) works without unpacking.

Example::

    images = read_idx(raw / "t10k-images-idx3-ubyte.gz")   # uint8 [10000, 28, 28]
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from capsbench.errors import DataError

_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in ``path``; ``DataError`` naming the file when it is damaged."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} could not be read ({exc}); delete it and download it again") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _TYPES:
        raise DataError(f"{path} is not an IDX file (bad magic {raw[:4].hex()}); delete it and download it again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; delete it and download it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_TYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or corrupt: header promises {dims} ({expected} bytes of data), "
            f"found {len(raw) - header}; delete it and download it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
