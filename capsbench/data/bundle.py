"""The result of building a data set: three torch Datasets and what a model needs to know.

Every Dataset yields ``(float32 tensor [C, H, W], int label)``, already normalised with the
training-split mean and std. In-memory splits hold one uint8 tensor and normalise on access
(a multiply-add: cheaper in memory than a float copy, and as fast for batch sizes of 64+);
``__getitems__`` lets a ``DataLoader`` fetch a whole batch with one indexing operation.

Example::

    bundle = build_data(DataConfig(name="digits", image_size=32))
    x, y = bundle.train[0]          # x: float32 [1, 32, 32], y: int
    xb, yb = bundle.train.batch(torch.arange(64))   # fast path for a custom loop
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset  # empty when data.val_size=0
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]  # (H, W) the model sees
    class_names: list[str]
    name: str
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units; (0, ...) when normalize=false
    std: tuple[float, ...]  # per channel; (1, ...) when normalize=false
    root: str = ""  # where the files were read from (for logs and records)


class _Normalise:
    """x_uint8 -> (x / 255 - mean) / std as one multiply-add per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        std_t = torch.tensor(std, dtype=torch.float32)
        self.scale = (1.0 / (255.0 * std_t)).view(-1, 1, 1)
        self.shift = (torch.tensor(mean, dtype=torch.float32) / std_t).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).mul_(self.scale).sub_(self.shift)


class ImageTensorDataset(Dataset):
    """Images held as one uint8 tensor ``[N, C, H, W]`` with int64 labels ``[N]``.

    ``indices`` are the positions of these images in their source split (provenance; tests
    use them to check that train and validation are disjoint).
    """

    def __init__(self, images: torch.Tensor, labels, mean, std, indices=None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if len(self.labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.labels)} labels")
        self.indices = np.arange(len(images)) if indices is None else np.asarray(indices)
        self.mean, self.std = tuple(mean), tuple(std)
        self._norm = _Normalise(mean, std)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._norm(self.images[i]), int(self.labels[i])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        x, y = self.batch(indices)
        return list(zip(x.unbind(0), y.tolist()))

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images ``[B, C, H, W]`` and labels ``[B]`` for ``indices`` in one step."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self._norm(self.images[idx]), self.labels[idx]


class ImageFileDataset(Dataset):
    """Images decoded from their files on every access (for data sets too large to hold in memory)."""

    def __init__(self, paths: Sequence[Path], labels, decode: Callable[[Path], np.ndarray], mean, std, indices=None):
        self.paths = list(paths)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.decode = decode
        self.indices = np.arange(len(self.paths)) if indices is None else np.asarray(indices)
        self.mean, self.std = tuple(mean), tuple(std)
        self._norm = _Normalise(mean, std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._norm(torch.from_numpy(self.decode(self.paths[i]))), int(self.labels[i])
