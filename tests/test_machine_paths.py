"""No file of the project names a folder of one particular machine (issue 12, item 2).

Shared data is found through ``$CAPSBENCH_SHARED_DATA`` or ``../shared/data`` beside the
checkout only; a fallback to one machine's absolute folder makes tests pass there and
nowhere else. Committed records may name a machine in their ``environment`` field (that is
measured output), nothing else may.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from capsbench.data.testing import shared_data_dir

REPO = Path(__file__).resolve().parent.parent
# an absolute path under a home or work root of one machine (home, Users, work, root, mnt, scratch)
MACHINE_PATH = re.compile(r"(?<![\w.~$-])/(?:home|Users|work|root|mnt|scratch)/[\w.]")
SKIP_SUFFIXES = (".png", ".jpg", ".jpeg", ".npz", ".pt", ".gz")


def tracked_files() -> list[Path]:
    """The files git tracks; without git (an unpacked sdist), every file outside hidden folders."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, text=True
        ).stdout
        return [REPO / name for name in out.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in REPO.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts)]


def without_environment(text: str, suffix: str) -> str:
    """JSON records keep the machine they ran on under ``environment``: that part is measured output."""
    if suffix not in (".json", ".jsonl"):
        return text

    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k != "environment"}
        return [strip(v) for v in obj] if isinstance(obj, list) else obj

    lines = text.splitlines() if suffix == ".jsonl" else [text]
    try:
        docs = [json.loads(line) for line in lines if line.strip()]
    except ValueError:
        return text
    return json.dumps([strip(d) for d in docs])


def test_machine_path_pattern_catches_the_usual_forms():
    # spelled in pieces, so this file does not name a machine path itself
    bad = [f"/{top}/{rest}" for top, rest in [("work", "shared/data"), ("home", "alice/data"), ("Users", "bob/x"),
                                              ("root", ".cache/x")]]
    bad += ['Path("/' + 'home/alice")', "root: /" + "Users/bob/x"]
    good = ["~/.cache/capsbench/data", "--out /tmp/runs", "$HOME/work/x", "../shared/data", "a/work/b"]
    assert all(MACHINE_PATH.search(text) for text in bad)
    assert not any(MACHINE_PATH.search(text) for text in good)


def test_no_tracked_file_names_a_machine_path():
    hits = []
    for path in tracked_files():
        if path.suffix in SKIP_SUFFIXES or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        text = without_environment(text, path.suffix)
        for match in MACHINE_PATH.finditer(text):
            line = text[: match.start()].count("\n") + 1
            hits.append(f"{path.relative_to(REPO)}:{line}: {text[match.start():match.start() + 60].splitlines()[0]}")
    assert not hits, "absolute machine paths (use $CAPSBENCH_SHARED_DATA or a relative path):\n" + "\n".join(hits)


def test_shared_data_is_found_only_through_the_variable_or_beside_the_checkout(tmp_path):
    checkout = tmp_path / "clone"
    checkout.mkdir()
    assert shared_data_dir(environ={}, checkout=checkout) is None  # no fallback to any fixed folder
    beside = tmp_path / "shared" / "data"
    beside.mkdir(parents=True)
    assert shared_data_dir(environ={}, checkout=checkout) == beside
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert shared_data_dir(environ={"CAPSBENCH_SHARED_DATA": str(elsewhere)}, checkout=checkout) == elsewhere
