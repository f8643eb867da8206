"""smallNORB from the original NYU binary matrix files, with capsbench's own reader.

Files (in ``root``, ``root/smallnorb`` or ``root/smallNORB``; each ``.mat`` or ``.mat.gz``)::

    smallnorb-5x46789x9x18x6x2x96x96-training-{dat,cat,info}.mat
    smallnorb-5x01235x9x18x6x2x96x96-testing-{dat,cat,info}.mat

Format: int32 little-endian magic (0x1E3D4C55 uint8 matrix, 0x1E3D4C54 int32 matrix), int32
ndim, then max(3, ndim) int32 dimensions (the unused ones are 1), then the data in C order.
``dat`` is uint8 [N, 2, 96, 96] (a stereo pair per object view), ``cat`` int32 [N] (0 animal,
1 human, 2 airplane, 3 truck, 4 car). ``info`` (instance, elevation, azimuth, lighting) is
not needed for classification and is only downloaded. Dimensions are read from the headers,
never assumed; a short or over-long file is a ``DataError`` naming it.

Preprocessing (as in the EM-routing paper, without its random crops): one image of each pair
(``options.stereo``: ``left`` = the first stored, ``right``, or ``both`` as two channels),
resized 96 -> ``image_size`` with bilinear antialiasing; ``image_size`` null means 48.

``download=true`` fetches the six ``.mat.gz`` files from NYU into ``root/smallnorb``, checks
their md5 (and the md5 of each unpacked ``.mat``) and unpacks them beside.

Example::

    bundle = build_data(DataConfig(name="smallnorb", options={"stereo": "both"}))  # [2, 48, 48]
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from capsbench.errors import DataError

from .download import download as fetch
from .download import gunzip, verify
from .loader import DatasetLoader
from .paths import not_found
from .source import ArraySplit, Source, file_fingerprint

BASE_URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
TRAIN = "smallnorb-5x46789x9x18x6x2x96x96-training"
TEST = "smallnorb-5x01235x9x18x6x2x96x96-testing"
CLASSES = ["animal", "human", "airplane", "truck", "car"]
DEFAULT_SIZE = 48

BYTE_MAGIC = 0x1E3D4C55
INT_MAGIC = 0x1E3D4C54
_DTYPES = {BYTE_MAGIC: np.dtype(np.uint8), INT_MAGIC: np.dtype("<i4")}

# md5 of each published .gz and of the unpacked .mat (from public loaders of the NYU files)
MD5 = {
    f"{TRAIN}-dat.mat.gz": "66054832f9accfe74a0f4c36a75bc0a2",
    f"{TRAIN}-cat.mat.gz": "23c8b86101fbf0904a000b43d3ed2fd9",
    f"{TRAIN}-info.mat.gz": "51dee1210a742582ff607dfd94e332e3",
    f"{TEST}-dat.mat.gz": "e4ad715691ed5a3a5f138751a4ceb071",
    f"{TEST}-cat.mat.gz": "5aa791cd7e6016cf957ce9bdb93b8603",
    f"{TEST}-info.mat.gz": "a9454f3864d7fd4bb3ea7fc3eb84924e",
    f"{TRAIN}-dat.mat": "8138a0902307b32dfa0025a36dfa45ec",
    f"{TRAIN}-cat.mat": "fd5120d3f770ad57ebe620eb61a0b633",
    f"{TRAIN}-info.mat": "19faee774120001fc7e17980d6960451",
    f"{TEST}-dat.mat": "e9920b7f7b2869a8f1a12e945b2c166c",
    f"{TEST}-cat.mat": "fd5120d3f770ad57ebe620eb61a0b633",
    f"{TEST}-info.mat": "7c5b871cc69dcadec1bf6a18141f5edc",
}
REQUIRED = [f"{TRAIN}-dat.mat", f"{TRAIN}-cat.mat", f"{TEST}-dat.mat", f"{TEST}-cat.mat"]
STEREO = {"left": [0], "right": [1], "both": [0, 1]}


def read_norb(path: str | Path, magic: int | None = None) -> np.ndarray:
    """The matrix in a NORB binary file (memory-mapped when plain, decompressed when ``.gz``).

    ``magic`` checks the element type. ``DataError`` naming the file for a bad header, a
    truncated body or trailing bytes.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        raw = gzip.decompress(path.read_bytes()) if gz else None
        head = raw[:8] if gz else _read_at(path, 0, 8)
        if len(head) < 8:
            raise _corrupt(path, "shorter than its 8-byte header")
        found_magic, ndim = struct.unpack("<ii", head)
        if found_magic not in _DTYPES:
            raise _corrupt(path, f"unknown magic 0x{found_magic & 0xFFFFFFFF:08X}, not a NORB matrix")
        if magic is not None and found_magic != magic:
            raise _corrupt(path, f"magic 0x{found_magic:08X}, expected 0x{magic:08X}")
        if not 1 <= ndim <= 16:
            raise _corrupt(path, f"implausible number of dimensions {ndim}")
        stored = max(3, ndim)
        header = 8 + 4 * stored
        dims_bytes = raw[8:header] if gz else _read_at(path, 8, 4 * stored)
        if len(dims_bytes) < 4 * stored:
            raise _corrupt(path, "truncated inside its header")
        dims = struct.unpack(f"<{stored}i", dims_bytes)[:ndim]
        if any(d < 0 for d in dims):
            raise _corrupt(path, f"negative dimension in {dims}")
        dtype = _DTYPES[found_magic]
        expected = math.prod(dims) * dtype.itemsize
        body = (len(raw) if gz else path.stat().st_size) - header
        if body != expected:
            what = "truncated" if body < expected else "longer than its header says"
            raise _corrupt(path, f"{what}: header promises {list(dims)} ({expected} bytes of data), found {body}")
        if gz:
            return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
        if expected == 0:
            return np.zeros(dims, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=header, shape=tuple(dims))
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} could not be read ({exc}); delete it and download it again") from None


def _read_at(path: Path, offset: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(f"{path} is corrupt: {why}; delete it and download it again")


def _existing(folder: Path, name: str) -> Path | None:
    for p in (folder / name, folder / f"{name}.gz"):
        if p.is_file():
            return p
    return None


class SmallNorbLoader(DatasetLoader):
    name = "smallnorb"
    options = {"stereo": ("left", tuple(STEREO))}

    def candidates(self, root: Path) -> list[Path]:
        return [root, root / "smallnorb", root / "smallNORB"]

    def locate(self, root: Path, opts: dict, download: bool) -> Path:
        for folder in self.candidates(root):
            if all(_existing(folder, f) for f in REQUIRED):
                return folder
        if download:
            return self.download(root / "smallnorb")
        raise not_found(self.name, root, f"{REQUIRED[0]}[.gz] and the other -dat/-cat files, in root or root/smallnorb")

    def download(self, folder: Path) -> Path:
        for kind in ("dat", "cat", "info"):
            for prefix in (TRAIN, TEST):
                mat = f"{prefix}-{kind}.mat"
                if verify(folder / mat, md5=MD5[mat]):
                    continue
                gz = fetch(BASE_URL + mat + ".gz", folder / f"{mat}.gz", md5=MD5[f"{mat}.gz"])
                gunzip(gz, folder / mat)
                if not verify(folder / mat, md5=MD5[mat]):
                    raise DataError(
                        f"{self.name}: {folder / mat} unpacked from a verified download fails its md5 check"
                    )
        return folder

    def read(self, where: Path, opts: dict, image_size: int | None) -> Source:
        channels = STEREO[opts["stereo"]]
        splits, used = [], []
        for prefix in (TRAIN, TEST):
            dat_path, cat_path = _existing(where, f"{prefix}-dat.mat"), _existing(where, f"{prefix}-cat.mat")
            used += [dat_path, cat_path]
            dat, cat = read_norb(dat_path, BYTE_MAGIC), read_norb(cat_path, INT_MAGIC)
            if dat.ndim != 4 or cat.ndim != 1 or len(dat) != len(cat):
                raise DataError(
                    f"{self.name}: {dat_path} {list(dat.shape)} and {cat_path} {list(cat.shape)} do not match: "
                    "expected [N, 2, H, W] images and N labels"
                )
            if max(channels) >= dat.shape[1]:
                raise DataError(
                    f"{self.name}: {dat_path} has {dat.shape[1]} image(s) per pair; stereo={opts['stereo']!r} needs 2"
                )
            if cat.size and not (cat.min() >= 0 and cat.max() < len(CLASSES)):
                raise DataError(f"{dat_path.name}: {cat_path} has categories outside 0..{len(CLASSES) - 1}")
            splits.append(ArraySplit(dat, np.asarray(cat, dtype=np.int64), channels=channels))
        return Source(splits[0], splits[1], list(CLASSES), size=DEFAULT_SIZE, fingerprint=file_fingerprint(used))


load_smallnorb = SmallNorbLoader()
