"""Every loader on the real shared copies (../shared/data); skipped with the reason when they are absent."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from capsbench.config import DataConfig
from capsbench.data import build_data
from capsbench.data.testing import SHARED_LAYOUT, shared_root

pytestmark = pytest.mark.data

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # shared/data/mnist/SOURCE.md


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSBENCH_CACHE", str(tmp_path / "cache"))


def real(shared_data, name, **kw):
    root = shared_root(name, shared_data)
    if root is None:
        pytest.skip(f"{name}: {shared_data / SHARED_LAYOUT[name]} not found")
    return build_data(DataConfig(name=name, root=str(root), **kw))


def counts(ds, n=10):
    return np.bincount(ds.labels.numpy(), minlength=n).tolist()


def snapshot(folder):
    return sorted((p, os.stat(os.path.join(p, f)).st_mtime_ns) for p, _, fs in os.walk(folder) for f in fs)


def test_mnist_train5k_root(shared_data):
    before = snapshot(shared_root("mnist", shared_data) or shared_data)
    b = real(shared_data, "mnist", image_size=32)
    assert len(b.train) + len(b.val) == 5000 and len(b.val) == 500 and len(b.test) == 10000
    assert [t + v for t, v in zip(counts(b.train), counts(b.val))] == [500] * 10 and counts(b.val) == [50] * 10
    assert counts(b.test) == MNIST_TEST_COUNTS
    assert (b.in_channels, b.image_size, b.num_classes) == (1, (32, 32), 10)
    x, _ = b.train.batch(torch.arange(len(b.train)))
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-2
    assert snapshot(shared_root("mnist", shared_data)) == before  # read in place: nothing unpacked into shared/


def test_fashion_mnist_complete(shared_data):
    b = real(shared_data, "fashion_mnist")
    assert (len(b.train), len(b.val), len(b.test)) == (54000, 6000, 10000)
    assert counts(b.val) == [600] * 10 and counts(b.test) == [1000] * 10
    assert b.image_size == (28, 28) and b.class_names[-1] == "Ankle boot"
    assert b.mean[0] == pytest.approx(0.2860, abs=2e-3) and b.std[0] == pytest.approx(0.3530, abs=2e-3)


def test_cifar10_jpeg_image_folder(shared_data):
    b = real(shared_data, "cifar10", subset=1000, test_subset=500)
    assert (len(b.train) + len(b.val), len(b.test)) == (1000, 500)
    assert counts(b.test) == [50] * 10 and (b.in_channels, b.image_size) == (3, (32, 32))
    assert b.class_names[:2] == ["airplane", "automobile"]
    assert b.mean == pytest.approx((0.491, 0.482, 0.447), abs=0.03)  # the published CIFAR-10 means


def test_imagewoof_subset_at_64(shared_data):
    b = real(shared_data, "imagewoof", image_size=64)
    assert (len(b.train) + len(b.val), len(b.test)) == (1000, 500) and counts(b.test) == [50] * 10
    assert (b.in_channels, b.image_size) == (3, (64, 64))
    assert b.class_names[0] == "Shih-Tzu" and b.class_names[-1] == "dingo"
    x, y = b.test[0]
    assert x.shape == (3, 64, 64) and y == 0
