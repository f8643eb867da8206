"""MNIST and Fashion-MNIST in the torchvision layout, read with capsbench's own IDX reader.

Files: ``<root>/MNIST/raw/`` (or ``FashionMNIST/raw/``) with ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
plain or ``.gz`` (plain preferred). ``data.root`` may point at the folder holding
``MNIST/``, at ``MNIST/`` itself, or at the ``raw`` folder. Nothing is written next to
existing files, so read-only copies work as they are.

``download=true`` fetches torchvision's mirrors, checked against torchvision's md5s, and
unpacks each ``.gz`` beside it so ``torchvision.datasets.MNIST(root)`` reads the same root.

Example::

    bundle = build_data(DataConfig(name="mnist", root="/data", image_size=32))  # 28 -> 32
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from capsbench.errors import DataError

from .download import download as fetch
from .download import gunzip
from .idx import read_idx
from .loader import DatasetLoader
from .paths import not_found
from .source import ArraySplit, Source, file_fingerprint

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


class IdxLoader(DatasetLoader):
    """A 10-class IDX data set in ``<root>/<folder>/raw``; ``torchvision_class`` supplies URLs and md5s."""

    options = {}

    def __init__(self, name: str, folder: str, class_names: list[str], torchvision_class: str):
        self.name = name
        self.folder = folder
        self.class_names = class_names
        self.torchvision_class = torchvision_class

    def candidates(self, root: Path) -> list[Path]:
        return [root / self.folder / "raw", root / "raw", root]

    def locate(self, root: Path, opts: dict, download: bool) -> Path:
        partial = None
        for folder in self.candidates(root):
            found = [_existing(folder / f) for f in FILES]
            if all(found):
                return folder
            if any(found) and partial is None:
                partial = (folder, [f for f, p in zip(FILES, found) if p is None])
        if download:
            return self.download(root / self.folder / "raw")
        if partial is not None:
            folder, missing = partial
            raise DataError(
                f"{self.name}: {folder} is incomplete: {', '.join(m + '[.gz]' for m in missing)} missing; "
                "set data.download=true on a machine with internet, run `capsbench prepare SPEC`, "
                "or copy the missing files there"
            )
        raise not_found(self.name, root, f"{self.folder}/raw/{FILES[0]}[.gz] and the other three IDX files")

    def download(self, raw: Path) -> Path:
        import torchvision.datasets as tvd  # only for its published mirrors and md5s

        cls = getattr(tvd, self.torchvision_class)
        for filename, md5 in cls.resources:
            gz = fetch([m + filename for m in cls.mirrors], raw / filename, md5=md5)
            if not (raw / filename.removesuffix(".gz")).is_file():
                gunzip(gz, raw / filename.removesuffix(".gz"))
        return raw

    def read(self, where: Path, opts: dict, image_size: int | None) -> Source:
        paths = [_existing(where / f) for f in FILES]
        arrays = [read_idx(p) for p in paths]
        splits = []
        for (images, labels), (ipath, lpath) in zip((arrays[:2], arrays[2:]), (paths[:2], paths[2:])):
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(
                    f"{self.name}: {ipath} ({images.shape}) and {lpath} ({labels.shape}) do not match: "
                    "expected [N, H, W] images and N labels"
                )
            if labels.size and not (0 <= labels.min() and labels.max() < len(self.class_names)):
                raise DataError(f"{self.name}: {lpath} has labels outside 0..{len(self.class_names) - 1}")
            splits.append(ArraySplit(images[:, None], labels.astype(np.int64)))
        return Source(splits[0], splits[1], self.class_names, fingerprint=file_fingerprint(paths))


def _existing(path: Path) -> Path | None:
    """``path`` if it exists, else ``path.gz`` if that exists, else None."""
    if path.is_file():
        return path
    gz = path.with_name(path.name + ".gz")
    return gz if gz.is_file() else None


load_mnist = IdxLoader("mnist", "MNIST", [str(d) for d in range(10)], "MNIST")
load_fashion_mnist = IdxLoader("fashion_mnist", "FashionMNIST", FASHION_CLASSES, "FashionMNIST")
