"""CIFAR-10 from torchvision's python pickle batches, or from an ImageFolder of image files.

Looked for, in order:

1. ``<root>/cifar-10-batches-py/`` (or ``root`` is that folder): read with
   ``torchvision.datasets.CIFAR10`` (which md5-checks every batch);
2. ``<root>/train/<class>/*`` and ``<root>/test/<class>/*`` with the ten CIFAR-10 class folders
   (``airplane`` ... ``truck``; the sorted names give torchvision's label order), for example
   a JPEG re-encoding such as ``shared/data/cifar10/jpg-q75``. Only the images a subset keeps
   are decoded.

``download=true`` fetches torchvision's ``cifar-10-python.tar.gz`` (md5-checked) into ``root``.

Example::

    bundle = build_data(DataConfig(name="cifar10", root=".../cifar10/jpg-q75", test_subset=1000))
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from capsbench.errors import DataError

from .download import download as fetch
from .download import extract_tar
from .folder import decode_rgb, has_splits, scan_splits
from .loader import DatasetLoader
from .paths import not_found
from .source import ArraySplit, FileSplit, Source, file_fingerprint

BATCHES = "cifar-10-batches-py"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Cifar10Loader(DatasetLoader):
    name = "cifar10"
    options = {}

    def _batches(self, root: Path) -> Path | None:
        for folder in (root / BATCHES, root):
            if folder.name == BATCHES and (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file():
                return folder
        return None

    def locate(self, root: Path, opts: dict, download: bool) -> Path:
        found = self._batches(root)
        if found is not None:
            return found
        if has_splits(root, ("train", "test")):
            return root
        if download:
            import torchvision.datasets as tvd  # only for its published URL and md5

            archive = fetch(tvd.CIFAR10.url, root / tvd.CIFAR10.filename, md5=tvd.CIFAR10.tgz_md5)
            return extract_tar(archive, root, BATCHES)
        raise not_found(
            self.name, root, f"{BATCHES}/ with the python batches, or train/<class>/*.jpg and test/<class>/*.jpg"
        )

    def read(self, where: Path, opts: dict, image_size: int | None) -> Source:
        if where.name == BATCHES:
            return self._read_batches(where)
        return self._read_folder(where)

    def _read_batches(self, folder: Path) -> Source:
        from torchvision.datasets import CIFAR10

        splits = []
        for train in (True, False):
            try:
                ds = CIFAR10(str(folder.parent), train=train, download=False)
            except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError, pickle errors, OSError...
                raise DataError(
                    f"{self.name}: the batches in {folder} could not be read ({exc}); "
                    "delete the folder and set data.download=true or run `capsbench prepare SPEC`"
                ) from None
            images = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))  # [N, 32, 32, 3] -> [N, 3, 32, 32]
            splits.append(ArraySplit(images, np.asarray(ds.targets, dtype=np.int64)))
        files = sorted(folder.iterdir())
        return Source(splits[0], splits[1], list(CLASSES), fingerprint=file_fingerprint(files, folder))

    def _read_folder(self, root: Path) -> Source:
        (train_paths, train_labels), (test_paths, test_labels), classes = scan_splits(root, "train", "test", self.name)
        if classes != CLASSES:
            raise DataError(
                f"{self.name}: {root}/train has class folders {classes}, expected the ten CIFAR-10 classes {CLASSES}"
            )
        first = decode_rgb(train_paths[0])
        decode = partial(decode_rgb, expect=tuple(first.shape[1:]))  # every image the same size as the first
        return Source(
            FileSplit(train_paths, train_labels, decode),
            FileSplit(test_paths, test_labels, decode),
            list(CLASSES),
            fingerprint=file_fingerprint(train_paths + test_paths, root),
        )


load_cifar10 = Cifar10Loader()
