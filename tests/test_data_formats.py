"""MNIST-style IDX roots, CIFAR-10 (pickle batches and ImageFolder) and ImageWoof on tiny generated files."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from PIL import Image

from capsbench.config import DataConfig
from capsbench.data import ImageFileDataset, ImageTensorDataset, build_data, imagewoof, prepare
from capsbench.data.folder import decode_square
from capsbench.data.idx import read_idx
from capsbench.data.mnist import FILES
from capsbench.errors import DataError, UserError

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CAPSBENCH_DATA", str(tmp_path / "nodata"))


def build(name, root, **kw):
    return build_data(DataConfig(name=name, root=str(root), **kw))


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)


def idx_bytes(array: np.ndarray) -> bytes:
    return struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_root(raw, n_train=40, n_test=20, side=10, gz=True):
    """Labels cycle 0..9; every pixel of image i equals its label * 20 (checks alignment)."""
    raw.mkdir(parents=True, exist_ok=True)
    arrays = []
    for n in (n_train, n_test):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.broadcast_to(labels[:, None, None] * 20, (n, side, side)).astype(np.uint8)
        arrays += [images, labels]
    for name, arr in zip(FILES, arrays):
        data = idx_bytes(arr)
        (raw / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return arrays


@pytest.mark.parametrize("where", ["parent", "folder", "raw"])
def test_mnist_root_may_point_at_parent_folder_or_raw(tmp_path, where):
    write_idx_root(tmp_path / "MNIST" / "raw")
    root = {"parent": tmp_path, "folder": tmp_path / "MNIST", "raw": tmp_path / "MNIST" / "raw"}[where]
    b = build("mnist", root, val_size=0, normalize=False)
    assert (len(b.train), len(b.test), b.image_size, b.in_channels) == (40, 20, (10, 10), 1)
    assert torch.equal(b.train.images[:, 0, 0, 0].long(), b.train.labels * 20)


def test_gz_only_roots_are_read_in_place_without_writing(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx_root(raw)
    before = sorted(os.listdir(raw))
    b = build("fashion_mnist", tmp_path, image_size=16)
    assert sorted(os.listdir(raw)) == before and b.class_names[0] == "T-shirt/top" and b.image_size == (16, 16)


def test_plain_files_are_preferred_over_gz(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_root(raw, gz=True)
    write_idx_root(raw, n_train=30, gz=False)
    assert len(build("mnist", tmp_path, val_size=0).train) == 30


def test_truncated_idx_is_a_data_error_naming_the_file(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_root(raw, gz=False)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte is truncated or corrupt"):
        build("mnist", tmp_path)
    path.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte could not be read"):
        read_idx(path)


def test_incomplete_and_missing_idx_roots(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_root(raw)
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"mnist: .*MNIST/raw is incomplete: t10k-labels-idx1-ubyte\[.gz\] missing"):
        build("mnist", tmp_path)
    with pytest.raises(DataError) as err:
        build("fashion_mnist", tmp_path / "elsewhere")
    msg = str(err.value)
    assert msg.startswith("fashion_mnist: data not found under") and str(tmp_path / "elsewhere") in msg
    assert "FashionMNIST/raw/train-images-idx3-ubyte[.gz]" in msg and "data.download=true" in msg


def test_mismatched_idx_counts(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_root(raw, gz=False)
    (raw / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(39, np.uint8)))
    with pytest.raises(DataError, match="do not match"):
        build("mnist", tmp_path)


def test_mnist_has_no_options(tmp_path):
    write_idx_root(tmp_path / "MNIST" / "raw")
    with pytest.raises(UserError, match="data.options.pad: unknown option for data set 'mnist'"):
        build("mnist", tmp_path, options={"pad": 2})


# ---------------------------------------------------------------- CIFAR-10


def write_folder(root, splits, classes, per_class, size=(32, 32), suffix=".png", grey_every=0):
    """PNG (lossless) images whose red channel is the class index * 20 and green the image number."""
    k = 0
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = np.zeros((size[1], size[0], 3), np.uint8)
                arr[..., 0], arr[..., 1], arr[..., 2] = c * 20, i, 128
                img = Image.fromarray(arr)
                k += 1
                if grey_every and k % grey_every == 0:
                    img = img.convert("L")
                img.save(folder / f"{i:04d}{suffix}")


def test_cifar_image_folder(tmp_path):
    write_folder(tmp_path, ["train", "test"], CIFAR_CLASSES, 3)
    b = build("cifar10", tmp_path, val_size=0.2, normalize=False, test_subset=10)
    assert (b.in_channels, b.image_size, b.class_names) == (3, (32, 32), CIFAR_CLASSES)
    assert (len(b.train), len(b.val), len(b.test)) == (24, 6, 10)
    for ds in (b.train, b.val, b.test):
        assert torch.equal(ds.images[:, 0, 0, 0].long(), ds.labels * 20)  # red channel encodes the label
    assert build("cifar10", tmp_path, image_size=16).image_size == (16, 16)


def test_cifar_folder_errors_name_the_problem(tmp_path):
    write_folder(tmp_path, ["train", "test"], CIFAR_CLASSES, 2)
    odd = tmp_path / "train" / "cat" / "0001.png"
    Image.new("RGB", (30, 32)).save(odd)
    with pytest.raises(DataError, match=r"0001.png is 30x32 pixels, expected 32x32"):
        build("cifar10", tmp_path)
    odd.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"0001.png is not a readable image"):
        build("cifar10", tmp_path)
    (tmp_path / "train" / "dog").rename(tmp_path / "train" / "doge")
    with pytest.raises(DataError, match="different class folders|expected the ten CIFAR-10 classes"):
        build("cifar10", tmp_path)


def write_cifar_batches(root, n_per_batch=20):
    """torchvision's pickle layout with made-up pixels; returns the md5 table torchvision should check."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = list(np.arange(n_per_batch) % 10)
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)  # str keys, as torchvision reads them
        entries[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_CLASSES}, f)
    entries["batches.meta"] = hashlib.md5((folder / "batches.meta").read_bytes()).hexdigest()
    return folder, entries


def patch_cifar_md5s(monkeypatch, entries):
    train = [[f"data_batch_{i}", entries[f"data_batch_{i}"]] for i in range(1, 6)]
    meta = {"filename": "batches.meta", "key": "label_names", "md5": entries["batches.meta"]}
    monkeypatch.setattr(tvd.CIFAR10, "train_list", train)
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", entries["test_batch"]]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", meta)


def test_cifar_pickle_batches_via_torchvision(tmp_path, monkeypatch):
    folder, entries = write_cifar_batches(tmp_path)
    patch_cifar_md5s(monkeypatch, entries)
    b = build("cifar10", tmp_path, val_size=0, normalize=False)
    assert (len(b.train), len(b.test), b.in_channels, b.image_size) == (100, 20, 3, (32, 32))
    with open(folder / "data_batch_1", "rb") as f:
        first = pickle.load(f)["data"][0].reshape(3, 32, 32)
    assert torch.equal(b.train.images[0], torch.from_numpy(first))  # CHW as stored, not transposed
    assert build("cifar10", folder, val_size=0).root == str(folder)  # root may be the batches folder itself


def test_cifar_batches_failing_torchvision_checks_are_one_line_data_errors(tmp_path):
    write_cifar_batches(tmp_path)  # md5s differ from torchvision's real ones
    with pytest.raises(DataError, match=r"cifar10: the batches in .*cifar-10-batches-py could not be read") as err:
        build("cifar10", tmp_path)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- ImageWoof

WNIDS = ["n02086240", "n02087394", "n09999999"]  # two real breeds and one unknown folder


def test_decode_square_resizes_shortest_side_and_centre_crops(tmp_path):
    arr = np.zeros((20, 60, 3), np.uint8)  # 60 wide, 20 high: left third red, middle green, right blue
    arr[:, :20, 0] = arr[:, 20:40, 1] = arr[:, 40:, 2] = 255
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = decode_square(tmp_path / "a.png", 10)
    assert out.shape == (3, 10, 10) and out.dtype == np.uint8
    inner = out[:, :, 1:-1]  # the antialiasing filter blends the border columns with their neighbours
    assert inner[1].min() == 255 and inner[0].max() == 0 and inner[2].max() == 0  # only the middle third survives
    assert np.array_equal(out[0, :, 0], out[2, :, -1]) and out[0, 0, 0] > 0  # centred: equal bleed on both sides
    Image.fromarray(arr[..., 0]).save(tmp_path / "g.jpg")  # greyscale JPEG -> three equal channels
    grey = decode_square(tmp_path / "g.jpg", 8)
    assert grey.shape == (3, 8, 8) and np.array_equal(grey[0], grey[1])


@pytest.mark.parametrize("preload", [True, False])
def test_imagewoof_folder_preloaded_or_lazy(tmp_path, preload):
    write_folder(tmp_path / "imagewoof2-320", ["train", "val"], WNIDS, 4, size=(40, 30), suffix=".JPEG", grey_every=5)
    b = build("imagewoof", tmp_path, image_size=16, val_size=0.25, options={"preload": preload})
    kind = ImageTensorDataset if preload else ImageFileDataset
    assert isinstance(b.train, kind) and isinstance(b.test, kind)
    assert b.class_names == ["Shih-Tzu", "Rhodesian ridgeback", "n09999999"]
    assert (len(b.train), len(b.val), len(b.test), b.in_channels, b.image_size) == (9, 3, 12, 3, (16, 16))
    x, y = b.val[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)


def test_imagewoof_lazy_and_preloaded_agree(tmp_path):
    write_folder(tmp_path, ["train", "val"], WNIDS, 4, size=(40, 30), suffix=".JPEG")
    lazy = build("imagewoof", tmp_path, image_size=12, options={"preload": False})
    eager = build("imagewoof", tmp_path, image_size=12, options={"preload": True})
    assert lazy.mean == pytest.approx(eager.mean) and lazy.std == pytest.approx(eager.std)
    for i in range(len(lazy.test)):
        assert torch.allclose(lazy.test[i][0], eager.test[i][0]) and lazy.test[i][1] == eager.test[i][1]


def test_imagewoof_default_size_is_the_release_and_missing_root(tmp_path):
    write_folder(tmp_path, ["train", "val"], WNIDS, 2, size=(40, 30), suffix=".JPEG")
    assert build("imagewoof", tmp_path, options={"release": 160}).image_size == (160, 160)
    with pytest.raises(DataError, match=r"imagewoof: data not found under .*root/imagewoof2-160"):
        build("imagewoof", tmp_path / "none", options={"release": 160})
    with pytest.raises(UserError, match=r"data.options.release: expected one of 160, 320"):
        build("imagewoof", tmp_path, options={"release": 224})


# ---------------------------------------------------------------- download=true / prepare, from file:// 'servers'


def test_prepare_mnist_uses_torchvision_resources_and_is_a_noop_when_present(tmp_path, monkeypatch):
    server = tmp_path / "server"
    write_idx_root(server)
    resources = [
        (f + ".gz", hashlib.md5((server / (f + ".gz")).read_bytes()).hexdigest())
        for f in sorted(p.name[:-3] for p in server.iterdir())
    ]
    monkeypatch.setattr(tvd.MNIST, "mirrors", [(tmp_path / "dead").as_uri() + "/", server.as_uri() + "/"])
    monkeypatch.setattr(tvd.MNIST, "resources", resources)
    cfg = DataConfig(name="mnist", root=str(tmp_path / "root"))
    (msg,) = prepare(cfg)
    raw = tmp_path / "root" / "MNIST" / "raw"
    assert msg == f"mnist: ready at {raw} (40 train, 20 test images)"
    names = sorted(os.listdir(raw))
    assert len(names) == 8 and all(n.endswith("ubyte") or n.endswith("ubyte.gz") for n in names)  # torchvision layout
    monkeypatch.setattr(tvd.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    assert prepare(cfg) == [msg]
    assert len(build_data(DataConfig(name="mnist", root=str(tmp_path / "root"), download=True)).test) == 20


def test_download_flag_off_never_touches_the_network(tmp_path, monkeypatch):
    monkeypatch.setattr(tvd.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DataError, match="mnist: data not found under"):
        build_data(DataConfig(name="mnist", root=str(tmp_path / "r")))
    with pytest.raises(DataError, match=r"could not download http://127.0.0.1:9/train-images-idx3-ubyte.gz"):
        build_data(DataConfig(name="mnist", root=str(tmp_path / "r"), download=True))


def test_prepare_cifar10_downloads_and_extracts_the_batches(tmp_path, monkeypatch):
    folder, entries = write_cifar_batches(tmp_path / "src")
    archive = tmp_path / "server" / "cifar.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname="cifar-10-batches-py")
    patch_cifar_md5s(monkeypatch, entries)
    monkeypatch.setattr(tvd.CIFAR10, "url", archive.as_uri())
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
    root = tmp_path / "root"
    (msg,) = prepare(DataConfig(name="cifar10", root=str(root)))
    assert msg == f"cifar10: ready at {root / 'cifar-10-batches-py'} (100 train, 20 test images)"
    assert build_data(DataConfig(name="cifar10", root=str(root))).class_names == CIFAR_CLASSES


def test_prepare_imagewoof_downloads_checks_sha256_and_extracts(tmp_path, monkeypatch):
    tree = tmp_path / "src" / "imagewoof2-160"
    write_folder(tree, ["train", "val"], ["n02086240", "n02088364"], 2, size=(24, 20), suffix=".JPEG")
    archive = tmp_path / "server" / "imagewoof2-160.tgz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tree, arcname="imagewoof2-160")
    monkeypatch.setattr(imagewoof, "URL", str(archive.parent.as_uri()) + "/imagewoof2-{release}.tgz")
    monkeypatch.setattr(imagewoof, "SHA256", {160: "f" * 64})
    cfg = DataConfig(name="imagewoof", root=str(tmp_path / "root"), image_size=8, options={"release": 160})
    with pytest.raises(DataError, match="failed its sha256 check"):
        prepare(cfg)
    monkeypatch.setattr(imagewoof, "SHA256", {160: hashlib.sha256(archive.read_bytes()).hexdigest()})
    (msg,) = prepare(cfg)
    assert msg.startswith("imagewoof: ready at") and msg.endswith("(4 train, 4 test images)")
    b = build_data(cfg)
    assert b.class_names == ["Shih-Tzu", "beagle"] and b.image_size == (8, 8)
