"""The common pipeline every data set goes through, and the base class data sets implement.

A data set says where its files are (``locate``, downloading when allowed) and how to read
them (``read`` -> ``Source``); the pipeline does the rest, identically for every data set:

1. options checked against the data set's declared options (unknown key: UserError),
2. root resolved (``data.root`` -> ``$CAPSBENCH_DATA`` -> ``~/.cache/capsbench/data``),
3. stratified ``subset`` of the training split, then the validation carve-out (``val_size``:
   fraction or count, 0 allowed: an empty validation set), and ``test_subset`` of the test
   split, all seeded by ``split_seed`` (see ``splits``),
4. resize to ``image_size`` (bilinear, antialiased; null: the data set's own size),
5. per-channel mean/std of the final training split, cached on disk (see ``stats``),
6. a ``DataBundle`` of normalised Datasets. No augmentation.

A plugin data set subclasses ``DatasetLoader`` and registers an instance::

    class MyData(DatasetLoader):
        name = "mine"
        options = {"variant": ("a", ("a", "b"))}      # key -> (default, allowed values or None)
        def locate(self, root, opts, download): ...   # -> Path, or raise not_found(...)
        def read(self, where, opts, image_size): ...  # -> Source

    DATASETS.register("mine", MyData())
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from capsbench.errors import UserError, did_you_mean

from .bundle import DataBundle, ImageFileDataset, ImageTensorDataset
from .paths import data_root
from .source import FileSplit, Source, chunks, materialise
from .splits import check_count, split_train, stratified_subset
from .stats import cached_stats, channel_stats

LAZY_CHUNK = 256  # files decoded per step when computing statistics of a lazy split


class DatasetLoader:
    """One data set. Instances are callable: ``loader(cfg) -> DataBundle`` (the DATASETS registry contract)."""

    name: str = "dataset"
    # option -> (default, allowed values or None for any value)
    options: dict[str, tuple[Any, tuple | None]] = {}

    def locate(self, root: Path, opts: dict, download: bool) -> Path:
        """The folder holding the files; download into ``root`` when allowed; else raise ``not_found``."""
        raise NotImplementedError

    def read(self, where: Path, opts: dict, image_size: int | None) -> Source:
        """Labels and pixel access for both official splits."""
        raise NotImplementedError

    def __call__(self, cfg) -> DataBundle:
        return build_bundle(cfg, self)

    def check_options(self, given) -> dict:
        """Declared defaults updated with ``given``; unknown keys and bad values are a UserError."""
        given = plain(given) or {}
        opts = {key: default for key, (default, _) in self.options.items()}
        for key, value in given.items():
            if key not in self.options:
                known = ", ".join(sorted(self.options)) or "(none)"
                raise UserError(
                    f"data.options.{key}: unknown option for data set '{self.name}'"
                    f"{did_you_mean(key, self.options)}; known options: {known}"
                )
            allowed = self.options[key][1]
            if allowed is not None and value not in allowed:
                raise UserError(
                    f"data.options.{key}: expected one of {', '.join(map(repr, allowed))} "
                    f"for '{self.name}', got {value!r}"
                )
            opts[key] = value
        return opts

    def prepare(self, cfg) -> list[str]:
        """Make the files present (downloading if needed) and check they read; one message per step."""
        opts = self.check_options(cfg.options)
        root = data_root(cfg.root)
        where = self.locate(root, opts, download=True)
        source = self.read(where, opts, cfg.image_size)
        return [f"{self.name}: ready at {where} ({len(source.train)} train, {len(source.test)} test images)"]


def plain(value):
    """OmegaConf containers -> plain dicts and lists; anything else unchanged."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return value


def _image_size(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < 1:
        raise UserError(f"data.image_size: expected a positive whole number of pixels or null, got {value!r}")
    return int(value)


def build_bundle(cfg, loader: DatasetLoader) -> DataBundle:
    """Run the common pipeline for ``loader`` under the DataConfig ``cfg``."""
    name = str(cfg.name)
    opts = loader.check_options(cfg.options)
    image_size = _image_size(cfg.image_size)
    root = data_root(cfg.root)
    where = loader.locate(root, opts, download=bool(cfg.download))
    source = loader.read(where, opts, image_size)

    subset = check_count(cfg.subset, "subset", len(source.train), name)
    test_subset = check_count(cfg.test_subset, "test_subset", len(source.test), name)
    seed = int(cfg.split_seed)
    train_idx, val_idx = split_train(source.train.labels, subset, cfg.val_size, seed)
    test_idx = stratified_subset(source.test.labels, test_subset, seed, "test")

    side = image_size or source.size
    size = (side, side) if side else None
    key = {  # everything that changes the training pixels: the statistics cache key
        "dataset": name,
        "root": str(where),
        "fingerprint": source.fingerprint,
        "subset": subset,
        "val_size": float(cfg.val_size),
        "split_seed": seed,
        "options": opts,
        "train_images": len(train_idx),
    }

    if source.lazy:  # the decoder already yields the final size (see Source)
        if not isinstance(source.train, FileSplit) or not isinstance(source.test, FileSplit):
            raise TypeError(f"{name}: a lazy source needs FileSplit splits")
        shape = tuple(source.train.take(train_idx[:1]).shape[1:])

        def compute():
            return channel_stats(source.train.take(part) for part in chunks(train_idx, LAZY_CHUNK))

        mean, std = _stats(cfg.normalize, key, shape, compute)

        def make(split: FileSplit, idx: np.ndarray):
            return ImageFileDataset(
                [split.paths[i] for i in idx], split.labels[idx], split.decode, mean, std, indices=idx
            )

        train, val, test = make(source.train, train_idx), make(source.train, val_idx), make(source.test, test_idx)
    else:
        train_x = materialise(source.train, train_idx, size)
        shape = tuple(train_x.shape[1:])
        mean, std = _stats(cfg.normalize, key, shape, lambda: channel_stats(chunks(train_x)))
        val_x = materialise(source.train, val_idx, shape[1:])
        test_x = materialise(source.test, test_idx, shape[1:])
        train = ImageTensorDataset(train_x, source.train.labels[train_idx], mean, std, indices=train_idx)
        val = ImageTensorDataset(val_x, source.train.labels[val_idx], mean, std, indices=val_idx)
        test = ImageTensorDataset(test_x, source.test.labels[test_idx], mean, std, indices=test_idx)

    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=len(source.class_names),
        in_channels=int(shape[0]),
        image_size=(int(shape[1]), int(shape[2])),
        class_names=list(source.class_names),
        name=name,
        mean=mean,
        std=std,
        root=str(where),
    )


def _stats(normalize: bool, key: dict, shape: tuple, compute):
    """Cached training statistics, or the identity (mean 0, std 1) when normalisation is off."""
    if not normalize:
        return (0.0,) * shape[0], (1.0,) * shape[0]
    return cached_stats({**key, "image_size": list(shape[1:])}, compute)
