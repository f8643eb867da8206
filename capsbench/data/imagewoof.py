"""ImageWoof (fastai's imagewoof2): ten dog breeds from ImageNet, as an ImageFolder.

Layout: ``{train,val}/<wnid>/*.JPEG``, at ``root`` itself or at ``root/imagewoof2-<release>``
(what the fastai tgz unpacks to); the official ``val`` split is the test set and validation
is carved from ``train`` like for every data set. ``options.release`` (320 or 160) picks the
archive ``download=true`` fetches (sha256-checked) and the default image size.

Images: converted to RGB (some files are greyscale), shortest side resized to ``image_size``
(bilinear, antialiased; JPEG draft mode lets libjpeg decode at a reduced scale first), then
centre-cropped to ``image_size`` x ``image_size``. ``image_size`` null means the release size.

Memory (``options.preload``): ``auto`` (default) decodes the kept images once into a uint8
tensor when that tensor is at most 2 GiB (the whole data set fits up to about 224 px), else
keeps them as files decoded per item (use ``data.num_workers``); ``true``/``false`` force
either. Decoded pixels are not cached on disk: decoding runs on a few threads at every build.

Example::

    bundle = build_data(DataConfig(name="imagewoof", root=".../imagewoof2-320-subset", image_size=64))
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from .download import download as fetch
from .download import extract_tar
from .folder import decode_square, has_splits, scan_splits
from .loader import DatasetLoader
from .paths import not_found
from .source import FileSplit, Source, file_fingerprint

URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-{release}.tgz"
SHA256 = {
    160: "663c22f69c2802d85e2a67103c017e047096702ffddf9149a14011b7002539bf",
    320: "4e4905ed7643120daaf9bf3b2ef7f3a7e8396d9bdaf254a38c6f01f618b4973d",
}
BREEDS = {
    "n02086240": "Shih-Tzu",
    "n02087394": "Rhodesian ridgeback",
    "n02088364": "beagle",
    "n02089973": "English foxhound",
    "n02093754": "Border terrier",
    "n02096294": "Australian terrier",
    "n02099601": "golden retriever",
    "n02105641": "Old English sheepdog",
    "n02111889": "Samoyed",
    "n02115641": "dingo",
}
PRELOAD_LIMIT = 2 << 30  # bytes of uint8 pixels held in memory under preload="auto"


class ImageWoofLoader(DatasetLoader):
    name = "imagewoof"
    options = {"release": (320, (160, 320)), "preload": ("auto", ("auto", True, False))}

    def locate(self, root: Path, opts: dict, download: bool) -> Path:
        folder = f"imagewoof2-{opts['release']}"
        for candidate in (root, root / folder):
            if has_splits(candidate, ("train", "val")):
                return candidate
        if download:
            release = int(opts["release"])
            archive = fetch(URL.format(release=release), root / f"{folder}.tgz", sha256=SHA256[release])
            return extract_tar(archive, root, folder)
        raise not_found(self.name, root, f"train/<wnid>/*.JPEG and val/<wnid>/*.JPEG in root or root/{folder}")

    def read(self, where: Path, opts: dict, image_size: int | None) -> Source:
        size = int(image_size or opts["release"])
        (train_paths, train_labels), (test_paths, test_labels), wnids = scan_splits(where, "train", "val", self.name)
        decode = partial(decode_square, size=size)
        pixels = (len(train_paths) + len(test_paths)) * 3 * size * size
        preload = opts["preload"]
        lazy = (pixels > PRELOAD_LIMIT) if preload == "auto" else not preload
        return Source(
            FileSplit(train_paths, train_labels, decode),
            FileSplit(test_paths, test_labels, decode),
            [BREEDS.get(w, w) for w in wnids],
            size=size,
            lazy=lazy,
            fingerprint=file_fingerprint(train_paths + test_paths, where),
        )


load_imagewoof = ImageWoofLoader()
