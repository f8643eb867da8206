"""``sweep: {extends: [...]}``: one sweep over methods that each bring their own settings."""

from __future__ import annotations

import pytest

from capsbench import spec
from capsbench.errors import SpecError
from tests.test_spec import write


@pytest.fixture
def presets(tmp_path):
    write(tmp_path, "base.yaml", """
        protocol: t
        train: {epochs: 7, batch_size: 16, optimizer: {name: sgd, lr: 0.5}}
        model: {capsule_types: 4}
    """)
    write(tmp_path, "m/em.yaml", """
        model: {routing: em, iterations: 2}
        train: {batch_size: 128, optimizer: {name: adam, lr: 3e-3}}
    """)
    write(tmp_path, "m/self.yaml", """
        model: {routing: self}
        train: {batch_size: 64}
    """)
    return tmp_path


def sweep_spec(tmp, body: str = "") -> object:
    text = "extends: base.yaml\nmodel: {capsule_types: 8}\nsweep:\n  extends: [m/em.yaml, m/self.yaml]\n"
    return write(tmp, "s.yaml", text + "  model.depth: [1, 3]\n" + body)


def test_presets_are_the_outermost_axis_and_name_the_runs(presets):
    runs = spec.load(sweep_spec(presets))
    assert [(r.config.model.routing, r.config.model.depth) for r in runs] == [
        ("em", 1), ("em", 3), ("self", 1), ("self", 3)
    ]
    assert runs[0].point == {"extends": "m/em.yaml", "model.depth": 1}
    assert runs[0].label.startswith("em-depth1-seed0-") and runs[3].label.startswith("self-depth3-seed0-")


def test_precedence_base_then_preset_then_own_keys_then_overrides(presets):
    em, _, sr, _ = spec.load(sweep_spec(presets, "train: {epochs: 2}\n"), ["train.optimizer.lr=0.01"])
    assert em.config.train.batch_size == 128 and sr.config.train.batch_size == 64  # preset beats base
    assert em.config.train.optimizer.name == "adam" and sr.config.train.optimizer.name == "sgd"
    assert em.config.model.capsule_types == 8  # the spec's own key beats base and preset
    assert em.config.train.epochs == 2
    assert em.config.train.optimizer.lr == sr.config.train.optimizer.lr == 0.01  # overrides beat presets
    assert em.config.model.iterations == 2 and sr.config.model.iterations == 3  # preset keys do not leak


def test_preset_settings_are_in_the_hash(presets, tmp_path):
    runs = spec.load(sweep_spec(presets))
    direct = write(tmp_path, "direct.yaml", "extends: [base.yaml, m/em.yaml]\nmodel: {capsule_types: 8, depth: 1}\n")
    (same,) = spec.load(direct)
    assert same.spec_hash == runs[0].spec_hash  # a preset is exactly one more base


@pytest.mark.parametrize(
    ("extra_file", "sweep_line", "overrides", "match"),
    [
        (None, "extends: [m/missing.yaml]", [], r"sweep\.extends: file 'm/missing.yaml' not found"),
        ("model: {depth: 2}\nsweep: {seed: [0, 1]}\n", "extends: [m/bad.yaml]", [], "cannot have its own sweep"),
        (None, "extends: [3]", [], "expected a list of spec file paths"),
        (None, "extends: [m/em.yaml]", ["extends=m/self.yaml"], "bases cannot be overridden"),
        (None, "extends: [m/em.yaml]", ["sweep.extends=m/self.yaml"], "expected a non-empty list of preset files"),
        ("model: {routing: emm}\n", "extends: [m/bad.yaml]", [], r"model\.routing.*did you mean.*with preset m/bad"),
    ],
)
def test_preset_errors_name_the_file(presets, extra_file, sweep_line, overrides, match):
    if extra_file:
        write(presets, "m/bad.yaml", extra_file)
    path = write(presets, "s.yaml", f"extends: base.yaml\nsweep:\n  {sweep_line}\n")
    with pytest.raises(SpecError, match=match):
        spec.load(path, overrides)


def test_same_run_from_two_presets_is_an_error(presets):
    write(presets, "m/em2.yaml",
          "model: {routing: em, iterations: 2}\ntrain: {batch_size: 128, optimizer: {name: adam, lr: 3e-3}}\n")
    path = write(presets, "s.yaml", "extends: base.yaml\nsweep:\n  extends: [m/em.yaml, m/em2.yaml]\n")
    with pytest.raises(SpecError, match="give the same run"):
        spec.load(path)


def test_an_override_runs_some_presets_with_the_same_labels(presets):
    full = spec.load(sweep_spec(presets))
    some = spec.load(sweep_spec(presets), ["sweep.extends=[m/self.yaml]"])
    assert [r.label for r in some] == [r.label for r in full if r.config.model.routing == "self"]
