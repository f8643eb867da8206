"""The common data pipeline end to end on `digits` (scikit-learn, offline): splits, resize, stats, cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from capsbench.config import DataConfig
from capsbench.data import DataBundle, build_data, prepare
from capsbench.data import loader as loader_module
from capsbench.errors import DataError, UserError
from capsbench.registry import DATASETS

N_DIGITS = 1797
N_TEST = 359  # fixed stratified 20%


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CAPSBENCH_DATA", str(tmp_path / "data"))


def digits(**kw) -> DataBundle:
    return build_data(DataConfig(name="digits", **kw))


def class_counts(ds, n=10):
    return np.bincount(ds.labels.numpy(), minlength=n)


def test_every_builtin_dataset_target_exists():
    for name in ["digits", "mnist", "fashion_mnist", "cifar10", "smallnorb", "imagewoof"]:
        loader = DATASETS.get(name)
        assert callable(loader) and hasattr(loader, "prepare") and loader.name == name


def test_shapes_metadata_and_items():
    b = digits(image_size=32)
    assert (b.name, b.num_classes, b.in_channels, b.image_size) == ("digits", 10, 1, (32, 32))
    assert b.class_names == [str(d) for d in range(10)]
    assert len(b.train) + len(b.val) == N_DIGITS - N_TEST and len(b.test) == N_TEST
    assert len(b.val) == round(0.1 * (N_DIGITS - N_TEST))
    x, y = b.train[0]
    assert x.dtype == torch.float32 and x.shape == (1, 32, 32) and isinstance(y, int) and 0 <= y < 10
    assert b.train.images.dtype == torch.uint8  # held once, in memory, at the final size


def test_native_size_without_image_size():
    b = digits()
    assert b.image_size == (8, 8) and b.test[0][0].shape == (1, 8, 8)


def test_resize_is_bilinear_antialiased_of_the_native_pixels():
    native, big = digits(normalize=False), digits(normalize=False, image_size=32)
    x8 = native.train.images[:4].float()
    x32 = torch.nn.functional.interpolate(x8, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(big.train.images[:4], x32.round().clamp(0, 255).to(torch.uint8))


def test_dataloader_batches_match_items():
    b = digits(image_size=16)
    xb, yb = next(iter(DataLoader(b.train, batch_size=8)))
    assert xb.shape == (8, 1, 16, 16) and yb.dtype == torch.int64
    for i in range(8):
        x, y = b.train[i]
        assert torch.allclose(xb[i], x) and yb[i].item() == y


def test_stratified_subset_counts_are_exact():
    b = digits(subset=100, val_size=0.2, test_subset=50)
    assert len(b.train) + len(b.val) == 100 and len(b.val) == 20 and len(b.test) == 50
    full = np.bincount(build_data(DataConfig(name="digits", val_size=0)).train.labels.numpy(), minlength=10)
    kept = class_counts(b.train) + class_counts(b.val)
    share = full * 100 / full.sum()
    assert np.all(kept >= np.floor(share)) and np.all(kept <= np.ceil(share))
    val_share = kept * 20 / kept.sum()
    assert np.all(class_counts(b.val) >= np.floor(val_share)) and np.all(class_counts(b.val) <= np.ceil(val_share))
    test_full = class_counts(digits().test)
    test_share = test_full * 50 / test_full.sum()
    assert np.all(class_counts(b.test) >= np.floor(test_share)) and np.all(class_counts(b.test) <= np.ceil(test_share))


def test_val_split_is_deterministic_disjoint_and_seeded():
    a, b = digits(val_size=0.25), digits(val_size=0.25)
    assert np.array_equal(a.val.indices, b.val.indices) and np.array_equal(a.train.indices, b.train.indices)
    assert not set(a.train.indices) & set(a.val.indices)
    assert len(set(a.train.indices) | set(a.val.indices)) == N_DIGITS - N_TEST
    c = digits(val_size=0.25, split_seed=1)
    assert not np.array_equal(a.val.indices, c.val.indices)
    assert np.array_equal(a.test.indices, c.test.indices)  # no test_subset: the whole test split, whatever the seed
    assert not np.array_equal(digits(test_subset=50).test.indices, digits(test_subset=50, split_seed=1).test.indices)
    assert torch.equal(a.val.images, b.val.images)


def test_val_size_zero_gives_empty_val_and_counts_work():
    b = digits(val_size=0, image_size=16)
    assert len(b.val) == 0 and b.val.images.shape == (0, 1, 16, 16) and len(b.train) == N_DIGITS - N_TEST
    assert len(digits(val_size=100).val) == 100
    assert len(digits(val_size=1).val) == 1  # >= 1 is a count


def test_training_split_is_normalised_to_zero_mean_unit_std():
    b = digits(image_size=16, subset=600)
    x, _ = b.train.batch(torch.arange(len(b.train)))
    assert abs(x.mean().item()) < 1e-4 and abs(x.std(unbiased=False).item() - 1) < 1e-3
    raw = b.train.images.double() / 255
    assert b.mean[0] == pytest.approx(raw.mean().item(), abs=1e-9)
    vx, _ = b.val.batch(torch.arange(len(b.val)))  # validation uses the training statistics
    assert torch.allclose(vx, (b.val.images.float() / 255 - b.mean[0]) / b.std[0], atol=1e-5)


def test_normalize_false_keeps_unit_range():
    b = digits(normalize=False)
    x, _ = b.train.batch(torch.arange(len(b.train)))
    assert b.mean == (0.0,) and b.std == (1.0,) and x.min() >= 0 and x.max() <= 1 and x.max() == 1


def test_statistics_are_cached_and_reused(tmp_path, monkeypatch):
    first = digits(subset=300)
    files = list((tmp_path / "cache" / "stats").glob("digits-*.json"))
    assert len(files) == 1
    record = json.loads(files[0].read_text())
    assert record["mean"] == list(first.mean) and record["key"]["subset"] == 300

    def fail(*a, **k):
        raise AssertionError("statistics recomputed despite a cache entry")

    monkeypatch.setattr(loader_module, "channel_stats", fail)
    assert digits(subset=300).mean == first.mean  # read back, not recomputed
    record["mean"] = [0.25]
    files[0].write_text(json.dumps(record))
    assert digits(subset=300).mean == (0.25,)  # the bundle really uses the cached numbers
    with pytest.raises(AssertionError, match="recomputed"):
        digits(subset=301)  # a different key is a different entry


def test_damaged_cache_entry_is_recomputed(tmp_path):
    good = digits(subset=200)
    (entry,) = (tmp_path / "cache" / "stats").glob("digits-*.json")
    entry.write_text("{not json")
    assert digits(subset=200).mean == good.mean
    assert json.loads(entry.read_text())["mean"] == list(good.mean)


def test_works_with_an_omegaconf_config():
    cfg = OmegaConf.structured(DataConfig(name="digits", image_size=12, subset=200))
    b = build_data(cfg)
    assert b.image_size == (12, 12) and len(b.train) + len(b.val) == 200


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(subset=0), "data.subset"),
        (dict(subset=5000), "data.subset=5000 is more than"),
        (dict(test_subset=1000), "data.test_subset"),
        (dict(val_size=1.5), "data.val_size"),
        (dict(val_size=-0.1), "data.val_size"),
        (dict(subset=10, val_size=10), "leaves no training images"),
        (dict(image_size=0), "data.image_size"),
    ],
)
def test_bad_sizes_are_one_line_user_errors(kw, match):
    with pytest.raises(UserError, match=match) as err:
        digits(**kw)
    assert "\n" not in str(err.value) and not isinstance(err.value, DataError)


def test_unknown_option_is_a_user_error():
    with pytest.raises(UserError, match=r"data.options.flip: unknown option for data set 'digits'.*\(none\)"):
        digits(options={"flip": True})


def test_prepare_digits_is_a_noop_message():
    assert prepare(DataConfig(name="digits")) == ["digits: ships with scikit-learn, nothing to download"]


def test_unknown_dataset_name_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean 'digits'"):
        build_data(DataConfig(name="digit"))
