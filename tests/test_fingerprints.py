"""Routing fingerprints: every registered routing has one, it agrees, and a 0.1% change is named."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from capsbench import fingerprints
from capsbench.capsules.routing.base import RoutingOutput
from capsbench.cli import main
from capsbench.registry import ROUTINGS
from tests.conftest import REPO

FOLDER = REPO / fingerprints.FOLDER


@pytest.mark.parametrize("name", ROUTINGS.names())
def test_committed_fingerprint_agrees(name):
    """Fails for a new routing (or changed numerics) with the exact command that records it."""
    assert fingerprints.check(FOLDER, [name]) == []


def test_every_fingerprint_file_has_a_routing():
    assert sorted(p.stem for p in FOLDER.glob("*.json")) == ROUTINGS.names()


def _scaled(cls, factor):
    """``cls`` with its output poses and activations scaled by ``factor`` (a 0.1% numerics change)."""

    class Scaled(cls):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            return RoutingOutput(out.pose * factor, (out.activation * factor).clamp(max=1.0), out.coefficients)

    return Scaled


def test_a_0_1_percent_change_names_the_routing_and_tensors(monkeypatch):
    original = ROUTINGS.get("self")
    monkeypatch.setitem(ROUTINGS._entries, "self", _scaled(original, 1.001))
    lines = fingerprints.check(FOLDER, ["self"])
    assert lines and all(line.startswith("fingerprint self: ") for line in lines)
    assert any("conv.out.pose[" in line and "recorded" in line for line in lines)
    assert fingerprints.check(FOLDER, ["em"]) == []  # the other routings are untouched


def test_cli_check_exit_1_and_record_needs_a_note(monkeypatch, tmp_path, capsys):
    for path in FOLDER.glob("*.json"):
        (tmp_path / path.name).write_text(path.read_text())
    monkeypatch.setitem(ROUTINGS._entries, "dynamic", _scaled(ROUTINGS.get("dynamic"), 1.001))
    assert main(["fingerprints", "check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "fingerprint dynamic: conv.out.pose" in err and 'capsbench fingerprints record ROUTING... --note' in err
    assert main(["fingerprints", "record", "dynamic", "--dir", str(tmp_path)]) == 2  # a changed one needs --note
    assert "--note" in capsys.readouterr().err
    assert main(["fingerprints", "record", "dynamic", "--dir", str(tmp_path), "--note", "scaled on purpose"]) == 0
    history = json.loads((tmp_path / "dynamic.json").read_text())["history"]
    assert history[-1]["note"] == "scaled on purpose" and len(history) == 2  # the first entry is kept
    assert main(["fingerprints", "check", "--dir", str(tmp_path)]) == 0


def test_a_routing_without_fingerprint_fails_with_the_command(monkeypatch, tmp_path):
    monkeypatch.setitem(ROUTINGS._entries, "my_routing", ROUTINGS.get("self"))
    monkeypatch.setitem(ROUTINGS._sources, "my_routing", "test")
    lines = fingerprints.check(tmp_path, ["my_routing"])
    assert lines == [f"fingerprint my_routing: missing ({tmp_path / 'my_routing.json'}); add it: "
                     'capsbench fingerprints record my_routing --note "new routing my_routing"']


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_fingerprints_do_not_depend_on_the_cpu_code_path(capability):
    """Another SIMD width (what another x86 CPU gives) moves float64 values far less than the tolerance."""
    if capability != "default" and capability.upper() not in {"AVX2", torch.backends.cpu.get_cpu_capability()}:
        pytest.skip(f"this CPU cannot run ATen's {capability} kernels")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "MKL_ENABLE_INSTRUCTIONS": "AVX2",
           "PYTHONPATH": str(REPO), "CAPSBENCH_MALLOC_TUNING": "0"}
    done = subprocess.run([sys.executable, "-m", "capsbench", "fingerprints", "check", "--dir", str(FOLDER)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
