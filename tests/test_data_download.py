"""Download helpers against local file:// 'servers': checksums, atomic writes, clear one-line failures."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile

import pytest

from capsbench.data.download import download, extract_tar, gunzip, verify
from capsbench.errors import DataError


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CAPSBENCH_DATA", str(tmp_path / "nodata"))


def sums(data: bytes):
    return hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()


@pytest.fixture
def served(tmp_path):
    src = tmp_path / "server" / "blob.bin"
    src.parent.mkdir()
    src.write_bytes(os.urandom(3000))
    return src


def no_temp_files(folder):
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_download_verifies_and_renames_atomically(tmp_path, served):
    sha, md5 = sums(served.read_bytes())
    dest = tmp_path / "out" / "blob.bin"
    assert download(served.as_uri(), dest, sha256=sha, md5=md5, progress=False) == dest
    assert dest.read_bytes() == served.read_bytes() and verify(dest, sha256=sha, md5=md5) and no_temp_files(dest.parent)


def test_checksum_mismatch_names_the_url_and_leaves_nothing(tmp_path, served):
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(DataError, match=rf"download of {served.as_uri()} failed its sha256 check") as err:
        download(served.as_uri(), dest, sha256="0" * 64, progress=False)
    assert "\n" not in str(err.value)
    assert not dest.exists() and no_temp_files(dest.parent)


def test_network_failures_are_one_line_data_errors(tmp_path):
    with pytest.raises(DataError, match=r"could not download http://127.0.0.1:9/x.gz") as err:
        download("http://127.0.0.1:9/x.gz", tmp_path / "x.gz", progress=False, timeout=5)
    assert "\n" not in str(err.value)
    missing = (tmp_path / "nothing-here").as_uri()
    with pytest.raises(DataError, match=f"could not download {missing}"):
        download(missing, tmp_path / "y", progress=False)
    assert sorted(os.listdir(tmp_path)) == []


def test_mirrors_are_tried_in_order(tmp_path, served):
    sha, _ = sums(served.read_bytes())
    dest = download([(tmp_path / "gone").as_uri(), served.as_uri()], tmp_path / "b", sha256=sha, progress=False)
    assert dest.read_bytes() == served.read_bytes()


def test_a_verified_file_is_not_fetched_again(tmp_path, served):
    sha, _ = sums(served.read_bytes())
    dest = tmp_path / "b"
    dest.write_bytes(served.read_bytes())
    assert download("http://127.0.0.1:9/unreachable", dest, sha256=sha, progress=False) == dest


def test_gunzip_and_bad_gzip(tmp_path):
    (tmp_path / "a.gz").write_bytes(gzip.compress(b"hello"))
    assert gunzip(tmp_path / "a.gz", tmp_path / "a").read_bytes() == b"hello"
    (tmp_path / "b.gz").write_bytes(gzip.compress(b"hello")[:-6])
    with pytest.raises(DataError, match="b.gz is not a valid gzip file"):
        gunzip(tmp_path / "b.gz", tmp_path / "b")
    assert not (tmp_path / "b").exists() and no_temp_files(tmp_path)


def make_tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_extract_tar_is_all_or_nothing(tmp_path):
    good = make_tar(tmp_path / "good.tgz", {"top/a.txt": b"a", "top/sub/b.txt": b"b"})
    (tmp_path / "dest").mkdir()
    out = extract_tar(good, tmp_path / "dest", "top")
    assert (out / "sub" / "b.txt").read_bytes() == b"b" and no_temp_files(tmp_path / "dest")
    wrong = make_tar(tmp_path / "wrong.tgz", {"other/a.txt": b"a"})
    with pytest.raises(DataError, match="does not contain the folder 'top2'"):
        extract_tar(wrong, tmp_path / "dest", "top2")
    evil = make_tar(tmp_path / "evil.tgz", {"../escape.txt": b"x"})
    with pytest.raises(DataError, match="could not be extracted"):
        extract_tar(evil, tmp_path / "dest", "top")
    assert not (tmp_path / "escape.txt").exists() and no_temp_files(tmp_path / "dest")
