"""``digits``: scikit-learn's 1,797 8x8 grey handwritten digits, the offline default.

Real data that ships inside the scikit-learn package (UCI optdigits), so it works on any
machine with no download; ``data.root`` and ``data.download`` are ignored. The 17 grey levels
(0..16) are scaled to 0..255. There is no official test split: a fixed stratified 20% (359
images) is the test set, chosen with a constant seed so it never moves with ``split_seed``.

Example::

    bundle = build_data(DataConfig(name="digits", image_size=32))   # 8x8 -> 32x32 for the quickstart
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .loader import DatasetLoader
from .source import ArraySplit, Source
from .splits import stratified_subset

TEST_FRACTION = 0.2
TEST_SEED = 0  # fixed: the test set is part of the data set's definition, not of a run


class DigitsLoader(DatasetLoader):
    name = "digits"
    options = {}

    def locate(self, root: Path, opts: dict, download: bool) -> Path:
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "data"

    def read(self, where: Path, opts: dict, image_size: int | None) -> Source:
        import sklearn
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [1797, 1, 8, 8]
        labels = bunch.target.astype(np.int64)
        n_test = int(round(TEST_FRACTION * len(labels)))
        test = np.zeros(len(labels), dtype=bool)
        test[stratified_subset(labels, n_test, TEST_SEED, "digits-test")] = True
        return Source(
            train=ArraySplit(images[~test], labels[~test]),
            test=ArraySplit(images[test], labels[test]),
            class_names=[str(d) for d in range(10)],
            fingerprint=f"sklearn-{sklearn.__version__}",
        )

    def prepare(self, cfg) -> list[str]:
        self.check_options(cfg.options)
        return ["digits: ships with scikit-learn, nothing to download"]


load_digits = DigitsLoader()
