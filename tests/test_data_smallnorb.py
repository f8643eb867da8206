"""smallNORB: the binary-matrix reader and loader on tiny files written here in the exact NYU format."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct

import numpy as np
import pytest
import torch

from capsbench.config import DataConfig
from capsbench.data import build_data, prepare, smallnorb
from capsbench.data.smallnorb import BYTE_MAGIC, INT_MAGIC, TEST, TRAIN, read_norb
from capsbench.errors import DataError, UserError

N, SIDE = 20, 24  # 4 views per class, 24x24 instead of 96x96: the reader must take dims from the header
LEFT, RIGHT = 40, 200  # constant pixel values of the two cameras


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CAPSBENCH_DATA", str(tmp_path / "nodata"))


def norb_bytes(array: np.ndarray, magic: int) -> bytes:
    """The NYU format: magic, ndim, max(3, ndim) dims (padded with 1), little-endian data."""
    dims = list(array.shape) + [1] * (3 - array.ndim)
    dtype = "<u1" if magic == BYTE_MAGIC else "<i4"
    return struct.pack(f"<ii{len(dims)}i", magic, array.ndim, *dims) + array.astype(dtype).tobytes()


def make_split(n=N, side=SIDE, seed=0):
    rng = np.random.default_rng(seed)
    cat = np.arange(n, dtype=np.int32) % 5
    dat = np.empty((n, 2, side, side), dtype=np.uint8)
    dat[:, 0] = LEFT + cat[:, None, None]  # the left image encodes the label: checks alignment
    dat[:, 1] = RIGHT
    info = rng.integers(0, 9, size=(n, 4)).astype(np.int32)
    return dat, cat, info


def write_norb(folder, gz=False, n=N, side=SIDE):
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i, prefix in enumerate((TRAIN, TEST)):
        dat, cat, info = make_split(n, side, seed=i)
        for kind, arr, magic in (("dat", dat, BYTE_MAGIC), ("cat", cat, INT_MAGIC), ("info", info, INT_MAGIC)):
            data = norb_bytes(arr, magic)
            path = folder / f"{prefix}-{kind}.mat{'.gz' if gz else ''}"
            path.write_bytes(gzip.compress(data) if gz else data)
            written[f"{prefix}-{kind}"] = (path, arr)
    return written


def norb(root, **kw):
    return build_data(DataConfig(name="smallnorb", root=str(root), **kw))


def test_header_sizes_match_the_published_files():
    assert len(norb_bytes(np.zeros((3, 2, 4, 4), np.uint8), BYTE_MAGIC)) == 24 + 3 * 2 * 16  # dat: 24-byte header
    assert len(norb_bytes(np.zeros(3, np.int32), INT_MAGIC)) == 20 + 12  # cat: 1 dim stored as 3


def test_reader_round_trips_every_kind(tmp_path):
    files = write_norb(tmp_path)
    for path, arr in files.values():
        got = read_norb(path)
        assert got.shape == arr.shape and np.array_equal(got, arr)
    assert isinstance(read_norb(files[f"{TRAIN}-dat"][0]), np.memmap)  # plain files are memory-mapped


def test_loads_with_default_size_48_and_left_camera(tmp_path):
    write_norb(tmp_path)
    b = norb(tmp_path, val_size=0)
    assert (b.num_classes, b.in_channels, b.image_size) == (5, 1, (48, 48))
    assert b.class_names == ["animal", "human", "airplane", "truck", "car"]
    assert len(b.train) == N and len(b.test) == N
    x, y = b.train[7]
    assert x.shape == (1, 48, 48) and y == 7 % 5


def test_labels_stay_aligned_with_images_and_cameras_select(tmp_path):
    write_norb(tmp_path / "smallnorb")  # the root/smallnorb layout
    left = norb(tmp_path, normalize=False, image_size=SIDE, val_size=0.25)
    for ds in (left.train, left.val, left.test):
        assert torch.equal(ds.images[:, 0, 0, 0].long(), LEFT + ds.labels)
    right = norb(tmp_path, normalize=False, image_size=SIDE, options={"stereo": "right"})
    assert torch.all(right.train.images == RIGHT)
    both = norb(tmp_path, image_size=12, options={"stereo": "both"})
    assert both.in_channels == 2 and both.train[0][0].shape == (2, 12, 12) and len(both.mean) == 2


def test_gzipped_files_read_the_same(tmp_path):
    write_norb(tmp_path / "plain")
    write_norb(tmp_path / "gz", gz=True)
    a, b = norb(tmp_path / "plain", image_size=16), norb(tmp_path / "gz", image_size=16)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)


def test_truncated_file_is_a_data_error_naming_it(tmp_path):
    files = write_norb(tmp_path)
    path = files[f"{TEST}-dat"][0]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=rf"{path.name} is corrupt: truncated") as err:
        norb(tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda b: b + b"\0", "longer than its header says"),
        (lambda b: b[:6], "shorter than its 8-byte header"),
        (lambda b: b[:14], "truncated inside its header"),
        (lambda b: b"\0\0\0\0" + b[4:], "unknown magic"),
    ],
)
def test_damaged_headers_and_bodies(tmp_path, damage, match):
    files = write_norb(tmp_path)
    path = files[f"{TRAIN}-dat"][0]
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=match):
        norb(tmp_path)


def test_truncated_gzip_is_a_data_error(tmp_path):
    files = write_norb(tmp_path, gz=True)
    path = files[f"{TRAIN}-cat"][0]
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(DataError, match=path.name):
        norb(tmp_path)


def test_swapped_files_and_mismatched_counts(tmp_path):
    files = write_norb(tmp_path)
    dat_path, cat_path = files[f"{TRAIN}-dat"][0], files[f"{TRAIN}-cat"][0]
    saved = dat_path.read_bytes()
    shutil.copy(cat_path, dat_path)  # an int32 matrix where a byte matrix belongs
    with pytest.raises(DataError, match=r"magic 0x1E3D4C54, expected 0x1E3D4C55"):
        norb(tmp_path)
    dat_path.write_bytes(saved)
    cat_path.write_bytes(norb_bytes(np.zeros(N - 1, np.int32), INT_MAGIC))
    with pytest.raises(DataError, match="do not match"):
        norb(tmp_path)
    cat_path.write_bytes(norb_bytes(np.full(N, 7, np.int32), INT_MAGIC))
    with pytest.raises(DataError, match="categories outside 0..4"):
        norb(tmp_path)


def test_single_camera_files_refuse_right_and_both(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    for prefix in (TRAIN, TEST):
        dat, cat, _ = make_split()
        (tmp_path / f"{prefix}-dat.mat").write_bytes(norb_bytes(dat[:, :1], BYTE_MAGIC))
        (tmp_path / f"{prefix}-cat.mat").write_bytes(norb_bytes(cat, INT_MAGIC))
    assert norb(tmp_path).in_channels == 1
    with pytest.raises(DataError, match="needs 2"):
        norb(tmp_path, options={"stereo": "both"})


def test_missing_data_offline_names_dataset_root_and_remedy(tmp_path):
    with pytest.raises(DataError) as err:
        norb(tmp_path / "empty")
    msg = str(err.value)
    assert msg.startswith("smallnorb: data not found under") and str(tmp_path / "empty") in msg
    assert "data.download=true" in msg and "capsbench prepare" in msg and "\n" not in msg


def test_options_are_checked(tmp_path):
    write_norb(tmp_path)
    with pytest.raises(UserError, match="did you mean 'stereo'"):
        norb(tmp_path, options={"stero": "left"})
    with pytest.raises(UserError, match=r"data.options.stereo: expected one of 'left', 'right', 'both'"):
        norb(tmp_path, options={"stereo": "middle"})


def test_prepare_downloads_verifies_and_unpacks(tmp_path, monkeypatch):
    """The whole download path against a local 'server' (file:// URLs) with the right md5s patched in."""
    server = tmp_path / "server"
    write_norb(server, gz=True)
    md5 = {}
    for gz in server.iterdir():
        md5[gz.name] = hashlib.md5(gz.read_bytes()).hexdigest()
        md5[gz.name[:-3]] = hashlib.md5(gzip.decompress(gz.read_bytes())).hexdigest()
    monkeypatch.setattr(smallnorb, "BASE_URL", server.as_uri() + "/")
    monkeypatch.setattr(smallnorb, "MD5", md5)
    root = tmp_path / "root"
    cfg = DataConfig(name="smallnorb", root=str(root))
    (msg,) = prepare(cfg)
    assert msg.startswith("smallnorb: ready at") and f"{N} train" in msg
    assert sorted(p.name for p in (root / "smallnorb").iterdir()) == sorted([*md5])  # .gz + unpacked .mat, no temp
    shutil.rmtree(server)
    assert prepare(cfg) == [msg]  # present: no network needed
    assert len(build_data(cfg).test) == N

    bad = tmp_path / "root2"
    write_norb(server, gz=True)
    monkeypatch.setattr(smallnorb, "MD5", {k: "0" * 32 for k in md5})
    with pytest.raises(DataError, match=r"failed its md5 check"):
        prepare(DataConfig(name="smallnorb", root=str(bad)))
    assert not any(p.name.endswith(".mat") or p.name.endswith(".gz") for p in (bad / "smallnorb").iterdir())
