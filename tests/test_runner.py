"""The training runner: run directory, record, robustness (diverged/failed/oom), resume and corruption.

A tiny fake capsule model and data set stand in for the real ones (the last tests use the real
``digits`` data set and capsnet). Interrupt-and-resume runs a real subprocess and kills it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import TensorDataset

from capsbench.capsules.types import Capsules
from capsbench.config import RunConfig
from capsbench.errors import UserError
from capsbench.registry import MODELS
from capsbench.results.run_record import checksum, verify
from capsbench.train import runner

HASH = "0123abcd"
EPOCHS = 3
TIMING_KEYS = {"images_per_s", "train_s", "eval_s", "epoch_s", "peak_memory_mb"}


# -- a tiny capsule model that follows the model contract -----------------------------------------------


class FakeLayer(nn.Module):
    """A capsule layer: 1x1 mixing of types, sigmoid activations, pose = activation."""

    def __init__(self, name: str, kind: str, in_types: int, out_types: int):
        super().__init__()
        self.name, self.kind = name, kind
        self.mix = nn.Conv2d(in_types, out_types, 1)

    def forward(self, inp) -> Capsules:
        x = inp.activation if isinstance(inp, Capsules) else inp
        if self.kind == "class":
            x = x.mean(dim=(2, 3), keepdim=True)
        a = torch.sigmoid(self.mix(x))
        return Capsules(a.unsqueeze(2), a)


class FakeCapsNet(nn.Module):
    """Options (``model.options``): ``nan_at_step``, ``raise_at_step``, ``oom_at_step`` (training forwards).

    ``$FAKE_SLEEP`` seconds of sleep per training forward keep a subprocess run slow enough to kill.
    """

    reference_loss = "spread"

    def __init__(self, cfg, num_classes, in_channels, image_size):
        super().__init__()
        options = dict(cfg.options)
        if options.get("bad"):
            raise UserError("model.options.bad: a bad option, for the test")
        self.options = options
        types = cfg.capsule_types
        # dropout draws from the global RNG: resume must restore it
        self.backbone = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.2))
        layers = [FakeLayer("primary", "primary", 4, types)]
        layers += [FakeLayer(f"conv{i + 1}", "conv", types, types) for i in range(cfg.depth)]
        layers += [FakeLayer("class", "class", types, num_classes)]
        self.capsule_layers = nn.ModuleList(layers)
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.options.get("raise_at_step"):
                raise RuntimeError("boom: the fake model failed")
            if self.calls == self.options.get("oom_at_step"):
                raise torch.OutOfMemoryError("CUDA out of memory (fake)")
            time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
        out = self.backbone(x)
        for layer in self.capsule_layers:
            out = layer(out)
        a = out.activation.flatten(1)
        if self.training and self.calls >= self.options.get("nan_at_step", float("inf")):
            a = a * float("nan")
        return a


def fake_data(cfg_data=None):
    gen = torch.Generator().manual_seed(0)
    patterns = torch.rand(3, 1, 6, 6, generator=gen)

    def split(n):
        y = torch.arange(n) % 3
        x = patterns[y] + 0.3 * torch.randn(n, 1, 6, 6, generator=gen)
        return TensorDataset(x, y)

    return SimpleNamespace(
        train=split(48), val=split(24), test=split(24), num_classes=3, in_channels=1, image_size=(6, 6),
        class_names=["a", "b", "c"],
    )  # fmt: skip


def install_fakes():
    MODELS.register("fake_caps", FakeCapsNet, source="tests", replace=True)
    runner.build_data = fake_data


def tiny_config(**overrides):
    cfg = OmegaConf.structured(RunConfig)
    cfg.name = "tiny"
    cfg.device = "cpu"
    cfg.model.arch = "fake_caps"
    cfg.model.depth = 2
    cfg.model.capsule_types = 4
    cfg.train.epochs = EPOCHS
    cfg.train.batch_size = 8
    cfg.train.eval_batch_size = 10  # 24 images: batches of 10, 10, 4
    cfg.train.optimizer.lr = 0.2
    cfg.train.scheduler.name = "step"
    cfg.train.scheduler.gamma = 0.5
    cfg.metrics.grad_norm_every = 4
    cfg.output.quiet = True
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=False)
    return cfg


@pytest.fixture
def fakes(monkeypatch):
    monkeypatch.setattr(runner, "build_data", fake_data)
    MODELS.register("fake_caps", FakeCapsNet, source="tests", replace=True)
    yield
    MODELS.unregister("fake_caps")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One uninterrupted run, shared by the resume and corruption tests."""
    MODELS.register("fake_caps", FakeCapsNet, source="tests", replace=True)
    saved, runner.build_data = runner.build_data, fake_data
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same as every subprocess below: reductions depend on it
    try:
        run_dir = tmp_path_factory.mktemp("baseline") / "run"
        record = runner.run(tiny_config(), run_dir, spec_hash=HASH, progress=False)
    finally:
        runner.build_data = saved
        torch.set_num_threads(threads)
        MODELS.unregister("fake_caps")
    return record, run_dir


def _jsonl(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _without_timings(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in TIMING_KEYS} for line in lines]


def _npz(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "activations.npz") as z:
        return {k: z[k] for k in z.files}


def assert_same_results(record: dict, run_dir: Path, baseline) -> None:
    """Metrics, per-epoch lines (without timings) and activation arrays all equal, exactly."""
    base_record, base_dir = baseline
    assert record["status"] == "ok"
    assert record["metrics"] == base_record["metrics"]
    assert _without_timings(_jsonl(run_dir)) == _without_timings(_jsonl(base_dir))
    ours, theirs = _npz(run_dir), _npz(base_dir)
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key])


# -- the run directory and the record ----------------------------------------------------------------------


def test_run_directory_and_record_layout(baseline):
    record, run_dir = baseline
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "activations.npz",
        "checkpoint.pt",
        "config.yaml",
        "metrics.jsonl",
        "record.json",
    ]
    on_disk = json.loads((run_dir / "record.json").read_text())
    assert on_disk == record and verify(record) and record["checksum"] == checksum(record)
    assert record["schema_version"] == 1
    assert (record["spec"], record["spec_hash"], record["seed"], record["run_id"]) == ("tiny", HASH, 0, "run")
    assert record["status"] == "ok" and record["error"] is None and record["diverged_epoch"] is None
    assert record["loss"] == "spread"  # the model's reference loss
    assert record["config"]["model"]["arch"] == "fake_caps"
    assert OmegaConf.load(run_dir / "config.yaml").train.epochs == EPOCHS

    m = record["metrics"]
    assert m["final_epoch"] == EPOCHS
    assert 0 <= m["test_accuracy"] <= 1 and m["test_loss"] >= 0
    assert m["best_val_accuracy"] == max(line["val_accuracy"] for line in _jsonl(run_dir))
    names = ["primary", "conv1", "conv2", "class"]
    for split in ("test", "val"):
        assert list(m["layers"][split]) == names
        for layer in m["layers"][split].values():
            assert set(layer) == {"kind", "dead_count", "dead_fraction", "mean_activation", "types"}
            assert layer["dead_count"] == sum(a <= 0.01 for a in layer["types"])
            assert layer["mean_activation"] == pytest.approx(np.mean(layer["types"]))
    conv = [m["layers"]["test"][n]["dead_count"] for n in ("conv1", "conv2")]
    assert m["avg_dead_conv"] == pytest.approx(np.mean(conv))
    assert set(m["grad_norms"]) == {*names, "backbone"}
    for name in names:
        assert m["grad_norms"][name]["weight"] > 0 and m["grad_norms"][name]["input"] > 0
    assert record["timings"]["images_per_s"] > 0 and record["timings"]["wall_s"] > 0
    assert record["num_params"] == sum(p.numel() for p in FakeCapsNet(tiny_config().model, 3, 1, (6, 6)).parameters())
    assert record["peak_memory_mb"] > 0
    assert record["environment"]["device"] == "cpu"


def test_metrics_jsonl_has_one_line_per_epoch(baseline):
    record, run_dir = baseline
    lines = _jsonl(run_dir)
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert [line["lr"] for line in lines] == pytest.approx([0.2, 0.1, 0.05])  # step schedule, per epoch
    for line in lines:
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "avg_dead_conv", "layers",
                    "grad_norms", "images_per_s", "epoch_s", "peak_memory_mb"):  # fmt: skip
            assert key in line, key
        assert set(line["layers"]["conv1"]) == {"kind", "dead_count", "dead_fraction", "mean_activation"}
    assert lines[-1]["val_accuracy"] == record["metrics"]["val_accuracy"]


def test_activations_npz_holds_eq12_per_epoch_layer_and_type(baseline):
    record, run_dir = baseline
    arrays = _npz(run_dir)
    names = ["primary", "conv1", "conv2", "class"]
    expected = {f"val/epoch{e:03d}/{n}" for e in (1, 2, 3) for n in names} | {f"test/epoch003/{n}" for n in names}
    assert set(arrays) == expected
    assert arrays["val/epoch002/conv1"].shape == (4,) and arrays["test/epoch003/class"].shape == (3,)
    np.testing.assert_array_equal(arrays["test/epoch003/conv2"], record["metrics"]["layers"]["test"]["conv2"]["types"])
    np.testing.assert_array_equal(arrays["val/epoch003/conv2"], record["metrics"]["layers"]["val"]["conv2"]["types"])


def test_finished_record_is_returned_without_training(fakes, baseline, tmp_path, capsys):
    record, base_dir = baseline
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "record.json").write_text((base_dir / "record.json").read_text())
    again = runner.run(tiny_config(), run_dir, spec_hash=HASH, progress=False)
    assert again == record
    assert sorted(p.name for p in run_dir.iterdir()) == ["record.json"]  # nothing trained, nothing written
    assert capsys.readouterr().err == ""


def test_record_of_another_spec_is_not_reused(fakes, baseline, tmp_path, capsys):
    _, base_dir = baseline
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "record.json").write_text((base_dir / "record.json").read_text())
    record = runner.run(tiny_config(**{"train.epochs": 1}), run_dir, spec_hash="other", progress=False)
    assert record["spec_hash"] == "other" and record["metrics"]["final_epoch"] == 1
    assert "belongs to another run" in capsys.readouterr().err


# -- robustness ---------------------------------------------------------------------------------------------


def test_nan_loss_stops_as_diverged_and_the_sweep_goes_on(fakes, tmp_path):
    cfg = tiny_config(**{"model.options": {"nan_at_step": 8}})  # 6 steps per epoch: step 8 is in epoch 2
    record = runner.run(cfg, tmp_path / "nan", spec_hash=HASH, progress=False)
    assert record["status"] == "diverged" and record["diverged_epoch"] == 2
    assert record["metrics"]["final_epoch"] == 1 and record["metrics"]["test_accuracy"] is None
    assert verify(json.loads((tmp_path / "nan" / "record.json").read_text()))
    assert [line["epoch"] for line in _jsonl(tmp_path / "nan")] == [1]
    # the next run of a sweep is unaffected
    assert (
        runner.run(tiny_config(**{"train.epochs": 1}), tmp_path / "next", spec_hash=HASH, progress=False)["status"]
        == "ok"
    )


def test_the_record_names_the_commit_the_run_started_from(fakes, tmp_path, monkeypatch):
    """A checkout that moves on during a long run does not change the code version its record names."""
    from capsbench import env

    trained = []
    real_epoch = runner.train_epoch
    monkeypatch.setattr(runner, "train_epoch", lambda *a, **k: trained.append(1) or real_epoch(*a, **k))
    head = lambda: "moved-on" * 5 if trained else "started" * 5 + "12345"  # noqa: E731  (HEAD after training)
    monkeypatch.setattr(env.subprocess, "run", lambda args, **kw: SimpleNamespace(
        stdout=head() if args[1] == "rev-parse" else "", returncode=0))  # fmt: skip
    env.git_commit.cache_clear()
    try:
        record = runner.run(tiny_config(**{"train.epochs": 1}), tmp_path / "r", spec_hash=HASH, progress=False)
    finally:
        env.git_commit.cache_clear()
    assert record["environment"]["git_commit"] == "started" * 5 + "12345"


def test_exception_in_training_gives_failed_record(fakes, tmp_path, capsys):
    record = runner.run(tiny_config(**{"model.options": {"raise_at_step": 2}}), tmp_path / "r", spec_hash=HASH)
    assert record["status"] == "failed"
    assert record["error"] == "RuntimeError: boom: the fake model failed"
    assert json.loads((tmp_path / "r" / "record.json").read_text())["status"] == "failed"
    assert "boom" in capsys.readouterr().err  # the traceback is shown for debugging


def test_out_of_memory_gives_oom_record(fakes, tmp_path):
    record = runner.run(tiny_config(**{"model.options": {"oom_at_step": 9}}), tmp_path / "r", spec_hash=HASH)
    assert record["status"] == "oom" and "out of memory" in record["error"]
    assert record["metrics"]["final_epoch"] == 1


def test_bad_input_propagates_as_user_error(fakes, tmp_path):
    with pytest.raises(UserError, match="model.options.bad"):
        runner.run(tiny_config(**{"model.options": {"bad": True}}), tmp_path / "a", spec_hash=HASH)
    with pytest.raises(UserError, match=r"train\.loss_options\.m_maxx"):
        runner.run(tiny_config(**{"train.loss_options": {"m_maxx": 1}}), tmp_path / "b", spec_hash=HASH)
    with pytest.raises(UserError, match=r"device"):
        runner.run(tiny_config(device="tpu"), tmp_path / "d", spec_hash=HASH)
    assert not (tmp_path / "a" / "record.json").exists()


def test_missing_tensorboard_is_a_user_error(fakes, tmp_path):
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed here")
    except ImportError:
        pass
    with pytest.raises(UserError, match=r"output\.tensorboard: .*pip install"):
        runner.run(tiny_config(**{"output.tensorboard": True}), tmp_path / "tb", spec_hash=HASH)


def test_mixed_precision_runs_with_unscaled_gradient_norms(fakes, tmp_path):
    norms = {}
    for amp in ("off", "bf16", "fp16"):
        cfg = tiny_config(**{"train.amp": amp, "train.epochs": 1, "metrics.grad_norm_every": 1000})  # step 0 only
        record = runner.run(cfg, tmp_path / amp, spec_hash=HASH)
        assert record["status"] == "ok", record["error"]
        assert record["metrics"]["train_loss"] is not None and record["metrics"]["test_loss"] is not None
        norms[amp] = record["metrics"]["grad_norms"]["conv1"]
    # same weights at step 0: fp16's loss scale (65536) must be divided out of both norms
    for amp in ("bf16", "fp16"):
        assert norms[amp]["input"] == pytest.approx(norms["off"]["input"], rel=0.05)
        assert norms[amp]["weight"] == pytest.approx(norms["off"]["weight"], rel=0.05)


def test_global_torch_settings_are_restored(fakes, tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    runner.run(tiny_config(**{"train.epochs": 1}), tmp_path / "r", spec_hash=HASH, progress=False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_progress_output_and_quiet(fakes, tmp_path, capsys):
    runner.run(tiny_config(**{"train.epochs": 1, "output.quiet": False}), tmp_path / "a", spec_hash=HASH)
    err = capsys.readouterr().err
    assert "epoch 1" in err and "val_acc" in err
    runner.run(tiny_config(**{"train.epochs": 1}), tmp_path / "b", spec_hash=HASH)
    assert capsys.readouterr().err == ""


# -- resume, interrupt, corruption ---------------------------------------------------------------------


LAUNCH = """
import sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
import test_runner as t
t.install_fakes()
from capsbench.train.runner import run
try:
    run(t.tiny_config(), {run_dir!r}, spec_hash={hash!r}, progress=False)
except KeyboardInterrupt:
    sys.exit(130)
"""


def _launch(run_dir: Path) -> subprocess.Popen:
    code = LAUNCH.format(tests=str(Path(__file__).parent), run_dir=str(run_dir), hash=HASH)
    env = {**os.environ, "FAKE_SLEEP": "0.15"}  # ~1 s per epoch: room to kill it mid-run
    return subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)


def _kill_after_first_checkpoint(run_dir: Path, sig: int) -> subprocess.Popen:
    proc = _launch(run_dir)
    deadline = time.monotonic() + 60
    while not (run_dir / "checkpoint.pt").exists():
        assert proc.poll() is None, f"the run exited early: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint after 60 s"
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_interrupted_run_resumes_to_the_same_record(fakes, baseline, tmp_path, sig):
    run_dir = tmp_path / "run"
    proc = _kill_after_first_checkpoint(run_dir, sig)
    assert proc.returncode == (130 if sig == signal.SIGTERM else -signal.SIGKILL), proc.stderr.read()
    assert not (run_dir / "record.json").exists(), "the run finished before it was killed"
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1  # the last completed epoch's checkpoint is on disk

    torch.set_num_threads(1)
    record = runner.run(tiny_config(), run_dir, spec_hash=HASH, progress=False)
    assert record["resumes"] == [1]
    assert_same_results(record, run_dir, baseline)


def test_corrupt_checkpoint_restarts_from_scratch(fakes, baseline, tmp_path, capsys):
    _, base_dir = baseline
    for how in ("truncate", "flip"):
        run_dir = tmp_path / how
        run_dir.mkdir()
        data = bytearray((base_dir / "checkpoint.pt").read_bytes())
        if how == "truncate":
            data = data[: len(data) // 2]
        else:  # inside tensor data: torch.load alone does not notice this
            data[len(data) // 2] ^= 0xFF
        (run_dir / "checkpoint.pt").write_bytes(bytes(data))
        record = runner.run(tiny_config(), run_dir, spec_hash=HASH, progress=False)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("warning: ") and str(run_dir / "checkpoint.pt") in err[0]
        assert "from scratch" in err[0]
        assert record["resumes"] == []
        assert_same_results(record, run_dir, baseline)


def test_corrupt_record_runs_again(fakes, baseline, tmp_path, capsys):
    base_record, base_dir = baseline
    text = (base_dir / "record.json").read_text()
    accuracy = json.dumps(base_record["metrics"]["test_accuracy"])
    assert f'"test_accuracy": {accuracy}' in text

    # a changed number still parses as JSON: the checksum catches it; the final checkpoint is reused
    run_dir = tmp_path / "flipped"
    run_dir.mkdir()
    for name in ("checkpoint.pt", "metrics.jsonl", "activations.npz"):
        (run_dir / name).write_bytes((base_dir / name).read_bytes())
    (run_dir / "record.json").write_text(text.replace(f'"test_accuracy": {accuracy}', '"test_accuracy": 0.999'))
    record = runner.run(tiny_config(), run_dir, spec_hash=HASH, progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run_dir / "record.json") in err[0] and "corrupt" in err[0]
    assert record["resumes"] == [EPOCHS]
    assert_same_results(record, run_dir, baseline)

    # truncated record and truncated checkpoint: both named, start from scratch
    run_dir = tmp_path / "both"
    run_dir.mkdir()
    (run_dir / "record.json").write_text(text[: len(text) // 3])
    (run_dir / "checkpoint.pt").write_bytes((base_dir / "checkpoint.pt").read_bytes()[:100])
    record = runner.run(tiny_config(), run_dir, spec_hash=HASH, progress=False)
    err = capsys.readouterr().err
    assert str(run_dir / "record.json") in err and str(run_dir / "checkpoint.pt") in err
    assert record["resumes"] == []
    assert_same_results(record, run_dir, baseline)


def test_checkpoint_of_another_spec_is_not_resumed(fakes, baseline, tmp_path, capsys):
    _, base_dir = baseline
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes((base_dir / "checkpoint.pt").read_bytes())
    record = runner.run(tiny_config(**{"train.epochs": 1}), run_dir, spec_hash="other", progress=False)
    assert "belongs to another run" in capsys.readouterr().err
    assert record["resumes"] == [] and record["metrics"]["final_epoch"] == 1


# -- the real thing: digits + capsnet ----------------------------------------------------------------------

KILL_AT: int | None = None  # training forward at which the wrapped capsnet sends SIGTERM to this process


def _capsnet_with_sigterm(cfg, num_classes, in_channels, image_size):
    from capsbench.models.capsnet import build_capsnet

    model = build_capsnet(cfg, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    calls = [0]

    def hook(module, args):
        if module.training:
            calls[0] += 1
            if calls[0] == KILL_AT:
                # raise_signal, not os.kill: the signal goes to this (the main) thread, never to one of
                # torch's or the run lock's threads, so the handler runs before the step ends
                signal.raise_signal(signal.SIGTERM)

    model.register_forward_pre_hook(hook)
    return model


@pytest.fixture
def real(monkeypatch, tmp_path):
    pytest.importorskip("capsbench.models.capsnet", reason="capsnet not written yet")
    data = pytest.importorskip("capsbench.data", reason="data package not written yet")
    if not hasattr(data, "build_data"):
        pytest.skip("capsbench.data.build_data not written yet")
    monkeypatch.setenv("CAPSBENCH_CACHE", str(tmp_path / "cache"))  # normalisation stats stay in the sandbox
    MODELS.register("capsnet_sigterm", _capsnet_with_sigterm, source="tests", replace=True)
    torch.set_num_threads(1)
    yield
    MODELS.unregister("capsnet_sigterm")


def real_config(**overrides):
    cfg = OmegaConf.structured(RunConfig)
    cfg.name, cfg.device = "digits_tiny", "cpu"
    cfg.model.update(arch="capsnet_sigterm", routing="self", backbone="tiny", depth=1, capsule_types=4, primary_types=4)
    cfg.data.update(name="digits", subset=150, test_subset=60)  # 135 train (5 steps of 32), 15 val
    cfg.train.update(epochs=2, batch_size=32, eval_batch_size=64)
    cfg.train.optimizer.lr = 0.05
    cfg.metrics.grad_norm_every = 2
    cfg.output.quiet = True
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_real_capsnet_on_digits_sigterm_and_resume(real, tmp_path):
    global KILL_AT
    record = runner.run(real_config(), tmp_path / "whole", spec_hash=HASH, progress=False)
    assert record["status"] == "ok", record["error"]
    assert record["loss"] == "nll"  # self-routing's reference loss
    m = record["metrics"]
    assert list(m["layers"]["test"]) == ["primary", "conv1", "class"]
    assert m["layers"]["test"]["conv1"]["kind"] == "conv" and len(m["layers"]["test"]["conv1"]["types"]) == 4
    # self-routing activations sum to 1 over parent types: the layer mean is 1/types
    assert m["layers"]["test"]["conv1"]["mean_activation"] == pytest.approx(0.25, abs=1e-4)
    assert m["avg_dead_conv"] == m["layers"]["test"]["conv1"]["dead_count"]
    assert all(m["grad_norms"][n]["weight"] > 0 for n in ("primary", "conv1", "class", "backbone"))
    assert m["grad_norms"]["conv1"]["input_activation"] > 0

    KILL_AT = 7  # epoch 2, step 2: SIGTERM stops after that step; the epoch-1 checkpoint is the resume point
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run(real_config(), tmp_path / "cut", spec_hash=HASH, progress=False)
    finally:
        KILL_AT = None
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "cut" / "record.json").exists()
    resumed = runner.run(real_config(), tmp_path / "cut", spec_hash=HASH, progress=False)
    assert resumed["resumes"] == [1]
    assert_same_results(resumed, tmp_path / "cut", (record, tmp_path / "whole"))
