"""Shared test setup: a deterministic hypothesis profile, tiny torch threads, shared data paths."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# CI profile: no deadlines (a loaded 2-core machine must not fail a property test), derandomised
# (same examples every run), few examples (tiny shapes; each example runs real routing).
settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    max_examples=25,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parent.parent


# Child processes (the CLI, --jobs workers, subprocess runs) get this worker's share of the cores:
# xdist runs one worker per core, and N workers each spinning every core's worth of threads would
# oversubscribe the machine N times over. An explicit OMP_NUM_THREADS is kept.
def _thread_share() -> str:
    from capsbench.cpus import usable_cores

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return str(max(1, usable_cores() // max(1, workers)))


# The xdist controller loads this file too, before it starts the workers, and they inherit its value:
# a marker tells the value set here (recomputed in each worker) from one the user set (kept).
if os.environ.get("OMP_NUM_THREADS") in (None, os.environ.get("CAPSBENCH_TEST_THREADS")):
    os.environ["OMP_NUM_THREADS"] = os.environ["CAPSBENCH_TEST_THREADS"] = _thread_share()

# Normalisation statistics are cached on disk; keep the suite's caches out of the user's home.
os.environ.setdefault("CAPSBENCH_CACHE", tempfile.mkdtemp(prefix="capsbench-test-cache-"))

from capsbench.data.testing import shared_data_dir  # noqa: E402 - after the cache variable is set


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data sets not found: set CAPSBENCH_SHARED_DATA or place them in ../shared/data")
    return path


@pytest.fixture(autouse=True)
def _small_torch():
    """One intra-op thread per test worker: xdist runs one worker per core."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ the compiled CPU kernels (native/)


@pytest.fixture
def broken_compiler(monkeypatch, tmp_path):
    """An empty cache and a compiler that does not exist; what was loaded is forgotten before and after."""
    from capsbench.capsules.routing.native import build

    monkeypatch.setenv("CAPSBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("CAPSBENCH_CC", str(tmp_path / "no-such-compiler"))
    build.forget()
    yield
    build.forget()


@pytest.fixture
def instruction_sets(monkeypatch):
    """The instruction sets this CPU runs; a test switches between them with $CAPSBENCH_CPU_ISA."""
    import torch

    from capsbench.capsules.routing.native import build

    build.forget()
    widest = build.widest_isa(build.load(torch.float32))
    yield list(build.ISAS)[: list(build.ISAS).index(widest) + 1]
    monkeypatch.delenv(build.ISA_SWITCH, raising=False)
    build.forget()


@pytest.fixture
def same_bits_on_every_isa(instruction_sets, monkeypatch):
    """``check(run, backend)``: forces each build this CPU runs, asserts ``backend()`` names it, and that
    ``run()`` (a list of tensors) gives the same bits under every one; skips where only one runs."""
    import torch

    from capsbench.capsules.routing.native import build

    def check(run, backend):
        if len(instruction_sets) < 2:
            pytest.skip(f"this CPU runs only {instruction_sets}: nothing to compare")
        results = {}
        for isa in instruction_sets:
            monkeypatch.setenv(build.ISA_SWITCH, isa)
            build.forget()
            assert backend() == f"c-{isa}"
            results[isa] = run()
        first, *others = instruction_sets
        for isa in others:
            for a, b in zip(results[first], results[isa]):
                assert torch.equal(a, b), f"{isa} differs from {first}"

    return check
