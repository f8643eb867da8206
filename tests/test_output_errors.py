"""Output folders and files that cannot be written: one line naming the path, exit code 2, nothing lost.

A full disk is simulated by making ``fsync`` of one file's temporary copy fail with ENOSPC (what a
full NFS or delayed-allocation file system reports at that point); the write path is the real one.
"""

from __future__ import annotations

import errno
import os

import pytest
import torch
from test_cli import REPO, capsbench
from test_runner import HASH, assert_same_results, fake_data, install_fakes, tiny_config

from capsbench.errors import OutputError
from capsbench.io import write_text
from capsbench.registry import MODELS
from capsbench.train import runner

QUICKSTART = str(REPO / "specs" / "quickstart.yaml")


def one_line_exit_2(result, needle: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_out_naming_an_existing_file(tmp_path):
    path = tmp_path / "results.txt"
    path.write_text("not a folder\n")
    one_line_exit_2(capsbench("run", QUICKSTART, "--out", str(path), "--quiet"), f"--out {path}: is a file")
    assert path.read_text() == "not a folder\n"


def test_out_that_cannot_be_created(tmp_path):
    # a folder under an existing file cannot be created, whoever runs the test (root ignores chmod)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = blocker / "runs"
    one_line_exit_2(capsbench("run", QUICKSTART, "--out", str(path), "--quiet"), f"{blocker} is a file")
    # the same check names the spec key when the folder comes from the spec
    one_line_exit_2(capsbench("run", QUICKSTART, f"output.dir={path}", "--quiet"), f"output.dir {path}")


def test_debug_shows_the_traceback_of_a_bad_out(tmp_path):
    path = tmp_path / "results.txt"
    path.write_text("x")
    result = capsbench("run", QUICKSTART, "--out", str(path), "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr and "OutputError" in result.stderr


def test_atomic_write_failing_leaves_the_previous_file(tmp_path, monkeypatch):
    path = write_text(tmp_path / "a.txt", "old\n")
    disk_full(monkeypatch, "a.txt")
    with pytest.raises(OutputError, match=r"a\.txt: cannot write it: no space left on the device"):
        write_text(path, "new\n")
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


# -- a full disk during a run ------------------------------------------------------------------------------


def disk_full(monkeypatch, name: str, after: int = 0) -> list[int]:
    """``fsync`` of the temporary copy of ``name`` fails with ENOSPC from its ``after``-th write on."""
    real, calls = os.fsync, [0]

    def fsync(fd):
        if f"/.{name}." in os.readlink(f"/proc/self/fd/{fd}"):
            calls[0] += 1
            if calls[0] > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


@pytest.fixture
def fakes(monkeypatch):
    # monkeypatch first, so it keeps the real build_data to restore (install_fakes sets it for good)
    monkeypatch.setattr(runner, "build_data", fake_data)
    install_fakes()
    yield
    MODELS.unregister("fake_caps")


@pytest.fixture
def whole(fakes, tmp_path):
    return runner.run(tiny_config(), tmp_path / "whole", spec_hash=HASH, progress=False), tmp_path / "whole"


def test_disk_full_at_a_checkpoint_keeps_the_previous_one(whole, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        disk_full(m, "checkpoint.pt", after=1)  # epoch 1 is saved, epoch 2's checkpoint finds the disk full
        with pytest.raises(OutputError) as info:
            runner.run(tiny_config(), run_dir, spec_hash=HASH, progress=False)
    message = str(info.value)
    assert "\n" not in message and str(run_dir / "checkpoint.pt") in message
    assert "no space left" in message and "checkpoint.pt of epoch 1 is intact" in message
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (run_dir / "record.json").exists()  # not a failed run: nothing was wrong with it
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    # space is back: the same command resumes after epoch 1 and ends with the uninterrupted run's results
    record = runner.run(tiny_config(), run_dir, spec_hash=HASH, progress=False)
    assert record["resumes"] == [1]
    assert_same_results(record, run_dir, whole)


def test_disk_full_at_the_record_keeps_the_last_checkpoint(whole, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        disk_full(m, "record.json")
        with pytest.raises(OutputError, match=r"record\.json: cannot write it: no space left.*epoch 3 is intact"):
            runner.run(tiny_config(), run_dir, spec_hash=HASH, progress=False)
    assert not (run_dir / "record.json").exists()
    record = runner.run(tiny_config(), run_dir, spec_hash=HASH, progress=False)
    assert record["resumes"] == [3]  # only the final test runs again
    assert_same_results(record, run_dir, whole)


def test_disk_full_ends_the_command_with_one_line_and_exit_2(fakes, tmp_path, monkeypatch, capsys):
    from capsbench import cli, spec

    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(
        "name: tiny\ndevice: cpu\nmodel: {arch: fake_caps, depth: 1, capsule_types: 4}\n"
        "train: {epochs: 2, batch_size: 8}\noutput: {progress: false}\n"
    )
    assert spec.load(spec_file)  # the fake model passes validation in this process
    disk_full(monkeypatch, "checkpoint.pt")
    code = cli.main(["run", str(spec_file), "--out", str(tmp_path / "runs"), "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "no space left" in err[0], err
    assert "no checkpoint was saved yet" in err[0]

