"""Run-record and leaderboard-record schemas: valid records pass, broken ones fail naming the file and key."""

from __future__ import annotations

import json

import pytest

from capsbench.errors import UserError
from capsbench.results.entry import method_of, record_path, to_entry
from capsbench.results.run_record import read_run_record, seal
from capsbench.results.schema import check_leaderboard_record, read_leaderboard_record
from capsbench.results.testing import fake_run_record, write_fake_run


def _write(tmp_path, record, name="record.json"):
    path = tmp_path / name
    path.write_text(json.dumps(record))
    return path


def test_a_valid_record_reads_back_unchanged(tmp_path):
    run = write_fake_run(tmp_path / "run", routing="vb", depth=2, dead=[1, 3])
    record = read_run_record(run / "record.json")
    assert record["config"]["model"]["routing"] == "vb"
    assert record["metrics"]["layers"]["test"]["conv2"]["dead_count"] == 3


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda r: r.pop("seed"), "(top level): 'seed' is a required property"),
        (lambda r: r["metrics"].pop("layers"), "metrics: 'layers' is a required property"),
        (lambda r: r.__setitem__("seed", "zero"), "seed: 'zero' is not of type 'integer'"),
        (lambda r: r["metrics"].__setitem__("test_accuracy", 1.5), "metrics.test_accuracy: 1.5 is greater than"),
        (lambda r: r.__setitem__("status", "great"), "status: 'great' is not one of"),
        (lambda r: r["metrics"]["layers"]["test"]["conv1"].__setitem__("dead_count", -1),
         "metrics.layers.test.conv1.dead_count: -1 is less than the minimum"),
        (lambda r: r.__setitem__("surprise", 1), "Additional properties are not allowed ('surprise'"),
    ],
)
def test_a_broken_record_fails_naming_the_file_and_the_key(tmp_path, edit, needle):
    record = fake_run_record()
    edit(record)
    path = _write(tmp_path, seal(record))  # sealed again: only the schema can catch it
    with pytest.raises(UserError) as info:
        read_run_record(path)
    message = str(info.value)
    assert str(path) in message and needle in message, message
    assert "\n" not in message


def test_a_record_of_another_schema_version_says_so(tmp_path):
    record = fake_run_record()
    record["schema_version"] = 2
    path = _write(tmp_path, seal(record))
    with pytest.raises(UserError, match=r"record.json: schema_version: expected 1 \(run record\), got 2"):
        read_run_record(path)


def test_an_edited_record_fails_its_checksum(tmp_path):
    record = fake_run_record(accuracy=0.5)
    record["metrics"]["test_accuracy"] = 0.99  # valid by the schema, but not what the run measured
    path = _write(tmp_path, record)
    with pytest.raises(UserError, match="checksum mismatch"):
        read_run_record(path)


def test_malformed_json_and_missing_files_are_one_line_errors(tmp_path):
    path = tmp_path / "record.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="record.json: malformed JSON"):
        read_run_record(path)
    with pytest.raises(UserError, match="nothing.json: no such file"):
        read_run_record(tmp_path / "nothing.json")


def test_the_leaderboard_record_is_small_and_valid():
    entry = to_entry(fake_run_record(routing="em", depth=3, dead=[0, 8, 16], seed=2))
    assert entry["schema_version"] == 1 and entry["protocol_version"] == "1"
    assert entry["method"] == "capsnet-em" and not entry["baseline"]
    assert entry["metrics"]["dead_fraction_conv"] == pytest.approx((0 + 0.5 + 1.0) / 3)
    assert set(entry["metrics"]["layers"]) == {"primary", "conv1", "conv2", "conv3", "class"}
    assert "val" not in json.dumps(entry["metrics"]["layers"])  # test split only: no per-epoch data
    assert "output" not in entry["config"] and "root" not in entry["config"]["data"]
    assert str(record_path(entry)) == f"records/test/v1/digits/capsnet-em/{entry['spec_hash'][:12]}-s2.json"
    check_leaderboard_record(entry)


def test_a_broken_leaderboard_record_names_the_file(tmp_path):
    entry = to_entry(fake_run_record())
    entry["metrics"]["test_accuracy"] = "high"
    path = _write(tmp_path, entry, "x.json")
    with pytest.raises(UserError, match=r"x.json: metrics.test_accuracy: 'high' is not of type"):
        read_leaderboard_record(path)
    del entry["variant"]
    entry["metrics"]["test_accuracy"] = 0.5
    with pytest.raises(UserError, match="'variant' is a required property"):
        read_leaderboard_record(_write(tmp_path, entry, "y.json"))


@pytest.mark.parametrize(
    ("model", "method", "baseline"),
    [
        ({"arch": "capsnet", "routing": "em"}, "capsnet-em", False),
        ({"arch": "capsnet", "routing": "self", "residual": True}, "capsnet-self-residual", False),
        ({"arch": "timm_resnet", "routing": "self", "residual": True}, "timm_resnet", True),
        ({"arch": "timm_vit", "routing": "em"}, "timm_vit", True),
    ],
)
def test_method_names(model, method, baseline):
    assert method_of(model) == (method, baseline)


def test_names_that_cannot_be_folders_and_minor_protocol_versions_are_refused():
    with pytest.raises(UserError, match="protocol 'my protocol' cannot name a leaderboard folder"):
        to_entry(fake_run_record(protocol="my protocol"))
    with pytest.raises(UserError, match="protocol_version '1.2': expected the protocol's MAJOR version as digits"):
        to_entry(fake_run_record(protocol_version="1.2"))


def test_baseline_records_get_their_class_count_from_the_data_set():
    entry = to_entry(fake_run_record(arch="timm_resnet", dataset="smallnorb"))
    assert entry["baseline"] and entry["num_classes"] == 5 and entry["metrics"]["layers"] == {}
