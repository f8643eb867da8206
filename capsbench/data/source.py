"""What a data set's reader hands to the common pipeline: labels first, pixels on request.

A ``Split`` knows its labels up front and decodes pixels only for the indices the pipeline
asks for, so a stratified subset of a folder of JPEGs decodes only the kept files. Pixels
are uint8 ``[n, C, H, W]``.

Example::

    >>> split = ArraySplit(np.zeros((4, 1, 8, 8), np.uint8), np.array([0, 1, 0, 1]))
    >>> split.take(np.array([1, 3])).shape
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CHUNK = 2048  # images per resize/decode step: bounds the float32 working memory


class Split:
    """One split of a data set: ``labels`` (int64 [N]) and ``take(indices) -> uint8 [n, C, H, W]``."""

    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> torch.Tensor:
        raise NotImplementedError


class ArraySplit(Split):
    """Images in an array (in memory or a numpy memmap), optionally keeping only some channels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, channels: Sequence[int] | None = None):
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"expected images [N, C, H, W] matching {len(labels)} labels, got {images.shape}")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.channels = list(channels) if channels is not None else None

    def take(self, indices: np.ndarray) -> torch.Tensor:
        images, channels = self.images, self.channels
        if channels is not None and channels == list(range(channels[0], channels[-1] + 1)):
            images, channels = images[:, channels[0] : channels[-1] + 1], None  # a view: a memmap reads only these
        x = images[np.asarray(indices, dtype=np.int64)]
        if channels is not None:
            x = x[:, channels]
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8))


class FileSplit(Split):
    """One image file per item; ``decode(path) -> uint8 [C, H, W]`` runs in a thread pool (PIL frees the GIL)."""

    def __init__(self, paths: Sequence[Path], labels: np.ndarray, decode: Callable[[Path], np.ndarray]):
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.decode = decode

    def take(self, indices: np.ndarray) -> torch.Tensor:
        paths = [self.paths[i] for i in np.asarray(indices, dtype=np.int64)]
        if not paths:
            return torch.zeros(0, dtype=torch.uint8)
        return torch.from_numpy(np.stack(decode_all(self.decode, paths)))


def decode_all(decode: Callable[[Path], np.ndarray], paths: Sequence[Path]) -> list[np.ndarray]:
    """``[decode(p) for p in paths]`` on a few threads, in order."""
    workers = min(8, os.cpu_count() or 1, max(1, len(paths) // 16))
    if workers <= 1:
        return [decode(p) for p in paths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(decode, paths))


@dataclass
class Source:
    """A data set as read from disk: its two official splits and what the pipeline needs to know.

    ``size``: the square side used when ``data.image_size`` is null (None: the stored size).
    ``lazy``: keep the images as files and decode per item instead of holding a tensor; the
    splits must then be ``FileSplit`` whose ``decode`` already yields the final size.
    ``fingerprint``: changes when the files change; part of the statistics cache key.
    """

    train: Split
    test: Split
    class_names: list[str]
    size: int | None = None
    lazy: bool = False
    fingerprint: str = ""


def chunks(indices: np.ndarray, size: int = CHUNK) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of uint8 ``[n, C, H, W]`` to ``size``, rounded back to uint8."""
    if tuple(images.shape[-2:]) == tuple(size) or images.shape[0] == 0:
        return images
    x = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def materialise(split: Split, indices: np.ndarray, size: tuple[int, int] | None) -> torch.Tensor:
    """The images at ``indices`` as one uint8 tensor, resized to ``size`` (None: as stored), chunk by chunk."""
    if len(indices) == 0:  # still give the right [0, C, H, W] shape: probe one image
        x = split.take(np.zeros(1, dtype=np.int64))
        return resize(x, size)[:0] if size is not None else x[:0]
    out = None
    for start, part in zip(range(0, len(indices), CHUNK), chunks(indices)):
        x = split.take(part)
        if size is not None:
            x = resize(x, size)
        if out is None:
            out = torch.empty((len(indices), *x.shape[1:]), dtype=torch.uint8)
        out[start : start + len(part)] = x
    return out


def file_fingerprint(paths: Sequence[Path], base: Path | None = None) -> str:
    """A short digest of file names, sizes and modification times."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        name = os.path.relpath(p, base) if base is not None else str(p)
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
