"""ImageFolder layouts (``<split>/<class>/<image>``) and the two image decoders they use.

Class indices follow the sorted class-folder names, as in ``torchvision.datasets.ImageFolder``.
Decoders return uint8 ``[C, H, W]`` and raise ``DataError`` naming the file when it is not a
readable image.

Example::

    paths, labels, classes = scan_split(root / "train")
    x = decode_square(paths[0], 64)     # uint8 [3, 64, 64]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from capsbench.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff"}


def has_splits(folder: Path, splits: tuple[str, ...]) -> bool:
    return all((folder / s).is_dir() for s in splits)


def scan_split(folder: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """(paths, labels, class names) of one split folder, in sorted class then file order."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(
            p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"{folder} holds no images in class folders (expected {folder}/<class>/<image>)")
    return paths, np.array(labels, dtype=np.int64), classes


def scan_splits(root: Path, train: str, test: str, dataset: str):
    """Both splits of an ImageFolder root; the class folders must agree."""
    train_paths, train_labels, classes = scan_split(root / train)
    test_paths, test_labels, test_classes = scan_split(root / test)
    if classes != test_classes:
        raise DataError(
            f"{dataset}: {root / train} and {root / test} have different class folders "
            f"({len(classes)} vs {len(test_classes)}); both need the same <class> folders"
        )
    return (train_paths, train_labels), (test_paths, test_labels), classes


def _open_rgb(path: Path, draft: int | None = None) -> Image.Image:
    try:
        with Image.open(path) as im:
            if draft:
                im.draft("RGB", (draft, draft))  # JPEG: decode at a reduced scale, still >= draft on each side
            return im.convert("RGB")  # some files are greyscale or CMYK
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path} is not a readable image ({exc}); delete or replace it") from None


def decode_rgb(path: Path, expect: tuple[int, int] | None = None) -> np.ndarray:
    """The image as RGB uint8 [3, H, W]; ``expect`` (H, W) checks the stored size."""
    arr = np.asarray(_open_rgb(path))
    if expect is not None and arr.shape[:2] != tuple(expect):
        got, want = f"{arr.shape[1]}x{arr.shape[0]}", f"{expect[1]}x{expect[0]}"
        raise DataError(f"{path} is {got} pixels, expected {want} like the others")
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def decode_square(path: Path, size: int) -> np.ndarray:
    """Resize the shortest side to ``size`` (bilinear, antialiased), centre-crop ``size`` x ``size``; RGB uint8."""
    im = _open_rgb(path, draft=size)
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    # PIL widens the bilinear filter when shrinking, so this is antialiased like torchvision's Resize
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    arr = np.asarray(im.crop((left, top, left + size, top + size)))
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
