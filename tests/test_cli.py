"""The command line: exit codes, one-line errors, validate/list/prepare."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from capsbench.cli import main

REPO = Path(__file__).resolve().parent.parent


def capsbench(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real console entry point in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "capsbench", *args], capture_output=True, text=True, cwd=cwd or REPO,
        timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def test_shipped_specs_all_validate(capsys):
    """Every spec in specs/ loads, expands and names known components (what CI checks)."""
    assert main(["validate", str(REPO / "specs")]) == 0
    out = capsys.readouterr().out
    assert "quickstart.yaml" in out and "error" not in out


def test_list_prints_one_name_per_line(capsys):
    from capsbench.registry import ROUTINGS

    assert main(["list", "routings"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines == [*ROUTINGS.names(), ""]  # every registered routing, installed plugins' included (contrib/)
    assert {"dynamic", "em", "self", "uniform", "vb"} <= set(lines)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("model: {routing: em\n", "malformed YAML"),
        ("model: {routin: em}\n", "model.routin: unknown key (did you mean 'routing'?)"),
        ("model: {depth: many}\n", "model.depth: expected an integer, got 'many'"),
        ("model: {routing: emroute}\n", "model.routing: unknown routing 'emroute'"),
        ("model: {depth: -2}\n", "model.depth: expected an integer >= 0"),
    ],
)
def test_bad_spec_exits_2_with_one_line_and_no_traceback(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for command in ("run", "validate"):
        result = capsbench(command, str(path))
        assert result.returncode == 2, (command, result.stderr)
        assert needle in result.stderr
        assert "Traceback" not in result.stderr
        assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {depth: -2}\n")
    result = capsbench("--debug", "run", str(path))
    assert result.returncode != 0 and "Traceback" in result.stderr
    result = capsbench("run", str(path), "--debug")
    assert "Traceback" in result.stderr


def test_missing_spec_and_bad_override(tmp_path):
    result = capsbench("run", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "nope.yaml: spec file not found" in result.stderr
    result = capsbench("run", str(REPO / "specs" / "quickstart.yaml"), "train.epochs")
    assert result.returncode == 2 and "expected key=value" in result.stderr


def test_list_unknown_kind_exits_2():
    result = capsbench("list", "routins")
    assert result.returncode == 2 and "did you mean 'routings'" in result.stderr


def test_validate_reports_every_bad_file_and_exits_2(tmp_path):
    (tmp_path / "good.yaml").write_text("model: {routing: em}\n")
    (tmp_path / "bad.yaml").write_text("seed: [\n")
    result = capsbench("validate", str(tmp_path))
    assert result.returncode == 2
    assert "ok     " in result.stdout and "good.yaml" in result.stdout
    assert "bad.yaml" in result.stderr


def test_malloc_tuning_reexecutes_once_and_can_be_turned_off(monkeypatch):
    from capsbench import malloc

    calls = []
    monkeypatch.setattr(malloc.os, "execve", lambda exe, argv, env: calls.append((argv, env)))
    monkeypatch.setattr(malloc.sys, "platform", "linux")
    for key in malloc.TUNING:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("CAPSBENCH_MALLOC_TUNING", raising=False)
    malloc.reexec_if_untuned(["run", "x.yaml"])
    ((argv, env),) = calls
    assert argv[1:] == ["-m", "capsbench", "run", "x.yaml"]
    assert all(env[k] == v for k, v in malloc.TUNING.items())
    # already tuned (the re-executed process): no second exec
    for key, value in malloc.TUNING.items():
        monkeypatch.setenv(key, value)
    malloc.reexec_if_untuned(["run"])
    assert len(calls) == 1
    # a value the user chose is kept; CAPSBENCH_MALLOC_TUNING=0 turns it all off
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "123")
    assert malloc.tuned_env()["MALLOC_MMAP_THRESHOLD_"] == "123"
    for key in malloc.TUNING:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CAPSBENCH_MALLOC_TUNING", "0")
    malloc.reexec_if_untuned(["run"])
    assert len(calls) == 1 and "MALLOC_TRIM_THRESHOLD_" not in malloc.tuned_env()


def test_validate_takes_overrides_as_run_does(capsys):
    """`validate SPEC key=value` checks what `run SPEC key=value` would run (issue 12, item 6)."""
    spec = str(REPO / "specs" / "quickstart.yaml")
    assert main(["validate", spec, "train.epochs=2", "model.depth=3"]) == 0
    assert "(1 run)" in capsys.readouterr().out  # depth fixed by the override: one run, not the swept two
    assert main(["validate", spec, "train.epochs=0"]) == 2
    assert "train.epochs: expected an integer >= 1" in capsys.readouterr().err
    assert main(["validate", spec, "--debug", "model.routng=em"]) == 2  # after an option too, as for run
    assert "model.routng: unknown key (did you mean 'routing'?)" in capsys.readouterr().err
