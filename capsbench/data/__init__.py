"""Data sets: one module per data set, one common pipeline (see ``loader``).

Public API::

    build_data(cfg: DataConfig) -> DataBundle     # train / val / test Datasets + metadata
    prepare(cfg: DataConfig) -> list[str]         # download and check files (for offline nodes)

Built-in data sets (registered lazily in ``capsbench.registry``): ``digits`` (scikit-learn,
offline default), ``mnist``, ``fashion_mnist``, ``cifar10``, ``smallnorb``, ``imagewoof``.
Files live under ``data.root`` (else ``$CAPSBENCH_DATA``, else ``~/.cache/capsbench/data``);
normalisation statistics are cached under ``$CAPSBENCH_CACHE`` (else ``~/.cache/capsbench``)
in ``stats/``.

Example::

    >>> from capsbench.config import DataConfig
    >>> bundle = build_data(DataConfig(name="digits", image_size=32, subset=500))
    >>> bundle.in_channels, bundle.image_size, len(bundle.train) + len(bundle.val)
    (1, (32, 32), 500)
"""

from __future__ import annotations

from .bundle import DataBundle, ImageFileDataset, ImageTensorDataset
from .loader import DatasetLoader, build_bundle
from .paths import cache_dir, data_root
from .source import ArraySplit, FileSplit, Source

__all__ = [
    "ArraySplit",
    "DataBundle",
    "DatasetLoader",
    "FileSplit",
    "ImageFileDataset",
    "ImageTensorDataset",
    "Source",
    "build_bundle",
    "build_data",
    "cache_dir",
    "data_root",
    "prepare",
]


def build_data(cfg) -> DataBundle:
    """Build the data set named ``cfg.name`` (a DataConfig or a DictConfig with its fields)."""
    from capsbench.registry import DATASETS

    return DATASETS.get(str(cfg.name))(cfg)


def prepare(cfg) -> list[str]:
    """Download (when missing) and check what ``cfg`` needs; one message per data set. No-op when present."""
    from capsbench.registry import DATASETS

    loader = DATASETS.get(str(cfg.name))
    if hasattr(loader, "prepare"):
        return list(loader.prepare(cfg))
    return [f"{cfg.name}: registered without a prepare step; nothing done"]
