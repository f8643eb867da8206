"""The Python API (issue 12, item 10): README's example runs as written; exports import lazily."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from capsbench import api
from capsbench.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def readme_block(heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the example's relative paths, from a checkout: specs/ beside runs/
    (tmp_path / "specs").symlink_to(REPO / "specs")
    exec(compile(readme_block("## Python API"), "README.md", "exec"), {})  # noqa: S102 - the documented example
    lines = capsys.readouterr().out.splitlines()
    (depth, accuracy), = eval(lines[0])  # noqa: S307 - printed by the example itself
    assert depth == 1 and 0.0 <= accuracy <= 1.0
    assert lines[1] == "torch.Size([2, 8, 16, 6, 6]) torch.Size([2, 8, 6, 6])"

    rows = api.load(tmp_path / "runs" / "notebook")  # an output folder: every sweep in it
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["config.train.epochs"] == 1
    again = api.run("specs/quickstart.yaml", ["model.depth=1", "train.epochs=1"], out="runs/notebook")
    assert [r["run_id"] for r in again] == [rows[0]["run_id"]]  # finished: read back, not re-run


def test_load_rejects_a_corrupt_record_naming_it(tmp_path):
    run = tmp_path / "sweep" / "run1"
    run.mkdir(parents=True)
    (run / "record.json").write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(UserError, match=r"record\.json"):
        api.load(tmp_path / "sweep")
    with pytest.raises(UserError, match="no such folder"):
        api.load(tmp_path / "missing")


def test_flatten_joins_nested_keys():
    assert api.flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": {}, "f": None}) == {
        "a.b": 1, "a.c.d": [2], "e": {}, "f": None,
    }


def test_public_components_import_without_making_capsbench_heavy():
    code = (
        "import sys\nimport capsbench, capsbench.api, capsbench.capsules, capsbench.capsules.routing\n"
        "print('torch' in sys.modules)\n"
        "from capsbench.capsules import Capsules, ConvCaps, ClassCaps, PrimaryCaps, Routing\n"
        "from capsbench.capsules.routing import Routing as R, RoutingOutput\n"
        "print(ConvCaps.__module__, R is Routing)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines() == ["False", "capsbench.capsules.layers True"], out.stderr
