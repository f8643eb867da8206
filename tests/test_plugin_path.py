"""The contribution path for an outside routing (issue 16): what contributing the two routings of contrib/
as plugins found missing or broken in capsbench, each fixed and tested here.

- a plugin ships its method preset inside its package; specs name it ``pkg:<package>/<path>``;
- a routing without an activation of its own declares how capsbench defines the one it measures
  (``ROUTINGS.register(..., about={"activation": ...})``), and the leaderboard marks the method;
- ``leaderboard rerecord --specs <a new routing's sweep>`` replaces only the records of the methods
  those specs produce (it removed every other record of the protocol).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from capsbench import rerun, spec
from capsbench.errors import SpecError
from capsbench.registry import ROUTINGS, Registry
from capsbench.report import leaderboard
from capsbench.results import store
from capsbench.results.testing import write_fake_run

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """An installed package ``my_plugin`` (on sys.path) shipping ``presets/mine.yaml``; importing it would fail."""
    site = tmp_path / "site"
    write(site / "my_plugin" / "__init__.py", "raise RuntimeError('finding a preset must not import the package')\n")
    write(site / "my_plugin" / "presets" / "mine.yaml", """
        model: {routing: self, iterations: 2}
        train: {batch_size: 16}
    """)
    monkeypatch.syspath_prepend(str(site))
    return site


def test_a_preset_shipped_inside_a_package_is_named_pkg_package_path(plugin_package, tmp_path):
    write(tmp_path / "base.yaml", "protocol: t\nmodel: {backbone: tiny, capsule_types: 4}\n")
    sweep = write(tmp_path / "s.yaml", """
        extends: base.yaml
        sweep:
          extends: [pkg:my_plugin/presets/mine.yaml]
          model.depth: [1, 2]
    """)
    runs = spec.load(sweep)
    assert [(r.config.model.routing, r.config.model.iterations, r.config.train.batch_size) for r in runs] == [
        ("self", 2, 16), ("self", 2, 16)]
    assert runs[0].label.startswith("mine-depth1-")  # named by the preset's file, as a relative preset is
    arm = write(tmp_path / "arm.yaml", "extends: [base.yaml, pkg:my_plugin/presets/mine.yaml]\nmodel: {depth: 1}\n")
    (direct,) = spec.load(arm)
    assert direct.spec_hash == runs[0].spec_hash  # a packaged preset is one more base, like a file beside the spec


@pytest.mark.parametrize(("name", "match"), [
    ("pkg:not_installed_plugin/presets/x.yaml", "no installed package 'not_installed_plugin'"),
    ("pkg:my_plugin/presets/missing.yaml", r"file 'pkg:my_plugin/presets/missing.yaml' not found"),
    ("pkg:my_plugin", "expected pkg:<package>/<path inside it>"),
])
def test_a_packaged_preset_that_cannot_be_found_is_one_line_naming_it(plugin_package, tmp_path, name, match):
    sweep = write(tmp_path / "s.yaml", f"protocol: t\nsweep:\n  extends: ['{name}']\n")
    with pytest.raises(SpecError, match=match):
        spec.load(sweep)


def test_about_is_declared_as_data_and_read_without_importing_the_component():
    reg = Registry("widget")
    reg.register("lazy", "no_such_module_anywhere:Thing", about={"activation": "a capsbench definition"})
    assert reg.about("lazy") == {"activation": "a capsbench definition"} and reg.about("other") == {}
    assert reg._entries["lazy"] == "no_such_module_anywhere:Thing"  # still lazy: nothing was imported
    with pytest.raises(ValueError, match="about must map names to strings"):
        reg.register("bad", "x:y", about={"activation": 1})
    reg.unregister("lazy")
    assert reg.about("lazy") == {}


def _fake_sweep(folder: Path, routing: str, accuracy: float = 0.9) -> Path:
    for depth in (1, 2):
        for seed in (0, 1):
            write_fake_run(folder / f"{routing}-d{depth}-s{seed}", routing=routing, depth=depth, seed=seed,
                           accuracy=accuracy - 0.01 * seed - 0.1 * depth)
    return folder


def test_the_leaderboard_marks_a_method_whose_activation_capsbench_defines(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    ROUTINGS.register("no_activation", "no_such_module_anywhere:Thing", about={"activation": "share of mass"})
    try:
        root = tmp_path / "board"
        root.mkdir()
        store.add(root, [_fake_sweep(tmp_path / "a", "no_activation"), _fake_sweep(tmp_path / "b", "em")], note="x")
        leaderboard.build(root)
    finally:
        ROUTINGS.unregister("no_activation")
    readme = (root / "README.md").read_text()
    assert "| capsnet-no_activation † |" in readme and "| capsnet-em |" in readme
    assert "† capsnet-no_activation: activation: share of mass" in readme
    rows = {r["name"]: r for r in json.loads((root / "test/v1/leaderboard.json").read_text())["datasets"][0]["rows"]}
    assert rows["capsnet-no_activation"]["activation"] == "share of mass" and "activation" not in rows["capsnet-em"]
    assert "capsnet-no_activation \\u2020" in (root / "index.html").read_text()  # the page's cells, JSON-escaped


def test_rerecord_with_named_specs_replaces_only_the_records_of_the_methods_they_produce(tmp_path, monkeypatch):
    root = tmp_path / "board"
    root.mkdir()
    store.add(root, [_fake_sweep(tmp_path / "old_em", "em"), _fake_sweep(tmp_path / "old_self", "self")], note="x")

    class Executor:  # "re-runs" self-routing with a changed result, as a new routing's own sweep would
        def run_all(self, runs, out):
            _fake_sweep(Path(out) / "self", "self", accuracy=0.8)
            return [json.loads(p.read_text()) for p in sorted(Path(out).rglob("record.json"))]

    monkeypatch.setattr(rerun, "sweep_runs", lambda protocol, paths: ["one run"])
    monkeypatch.setattr("capsbench.executors.get_executor", lambda *a, **k: Executor())
    done = rerun.rerecord(root, "test", [tmp_path / "self.yaml"], "self changed", jobs=1, out=tmp_path / "out",
                          log=lambda *a: None, only_their_methods=True)
    assert len(done.removed) == len(done.added) == 4 and all("capsnet-self" in p for p in done.removed)
    assert sum("capsnet-em" in p for p in store.read_records(root)) == 4  # not the named specs' to judge
