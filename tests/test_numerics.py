"""Numerics modes: the spec key, what a process needs for portable, and what records say about it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from capsbench import numerics, spec
from capsbench.env import environment
from capsbench.errors import SpecError, UserError
from tests.conftest import REPO


def test_native_is_hash_neutral_and_portable_changes_the_hash():
    runs = {mode: spec.load(REPO / "specs" / "quickstart.yaml", [f"numerics={mode}", "model.depth=1"])[0]
            for mode in ("native", "portable")}
    plain = spec.load(REPO / "specs" / "quickstart.yaml", ["model.depth=1"])[0]
    assert runs["native"].spec_hash == plain.spec_hash != runs["portable"].spec_hash


def test_an_unknown_mode_is_a_spec_error():
    with pytest.raises(SpecError, match="numerics: expected one of native, portable"):
        spec.load(REPO / "specs" / "quickstart.yaml", ["numerics=fast"])


def test_portable_needs_its_variables_at_process_start(monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    with pytest.raises(UserError, match="numerics: portable needs ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE"):
        numerics.check_process("portable")
    numerics.check_process("native")  # nothing needed


def test_records_state_the_cpu_model_and_numerics():
    env = environment("cpu")
    assert env["cpu_model"] and env["cpu_model"] == numerics.cpu_model()
    assert env["numerics"]["mode"] == "native" and set(env["numerics"]) == {
        "mode", "aten_cpu_capability", "mkl_cbwr", "mkldnn", "nnpack", "threads"}


def test_a_portable_process_applies_and_reports_the_mode():
    # NNPACK must be off inside: it dispatches and blocks by the CPU model (cpuinfo), which ATEN_CPU_CAPABILITY and
    # MKL_CBWR do not pin; with it on, every ci record failed verify on an Intel Xeon
    code = ("import torch\nfrom capsbench import numerics\nwith numerics.applied('portable'):\n"
            "    d = numerics.describe()\n"
            "print(d['mode'], d['aten_cpu_capability'], d['mkldnn'], d['nnpack'], d['threads'],"
            " torch.backends.mkldnn.enabled, torch._C._get_nnpack_enabled())")
    env = {**os.environ, "PYTHONPATH": str(REPO), **numerics.process_env("portable"), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["portable", "DEFAULT", "False", "False", "1", "True", "True"], done.stderr
