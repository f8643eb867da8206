"""Where each data set sits inside the shared real-data folder (``shared/data``), for tests.

The shared copies are read-only and partly subsets (see each ``shared/data/*/SOURCE.md``):

- mnist: ``mnist/torchvision-root-train5k`` (5,000 train images, the full 10,000 test images)
- fashion_mnist: ``fashion-mnist`` (complete, 60,000 + 10,000)
- cifar10: ``cifar10/jpg-q75`` (JPEG re-encoding: 5,000 train, 10,000 test)
- imagewoof: ``imagewoof/imagewoof2-320-subset`` (1,000 train, 500 val)

Example::

    root = shared_root("mnist", shared_data_dir())   # -> .../mnist/torchvision-root-train5k
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SHARED_LAYOUT = {
    "mnist": "mnist/torchvision-root-train5k",
    "fashion_mnist": "fashion-mnist",
    "cifar10": "cifar10/jpg-q75",
    "imagewoof": "imagewoof/imagewoof2-320-subset",
}


CHECKOUT = Path(__file__).resolve().parents[2]  # the source tree this package was imported from


def shared_data_dir(environ: Mapping[str, str] = os.environ, checkout: Path = CHECKOUT) -> Path | None:
    """``$CAPSBENCH_SHARED_DATA``, else ``../shared/data`` beside the checkout, else None.

    Nothing else: a folder of one particular machine would make tests pass there and skip
    (or fail) everywhere else.
    """
    env = environ.get("CAPSBENCH_SHARED_DATA")
    path = Path(env) if env else checkout.parent / "shared" / "data"
    return path if path.is_dir() else None


def shared_root(dataset: str, base: Path | None = None) -> Path | None:
    """The root to pass as ``data.root`` for ``dataset``, or None when that copy is absent."""
    base = base if base is not None else shared_data_dir()
    if base is None or dataset not in SHARED_LAYOUT:
        return None
    path = Path(base) / SHARED_LAYOUT[dataset]
    return path if path.is_dir() else None
