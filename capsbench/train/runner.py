"""``run(cfg, run_dir)``: one training run, from a resolved config to a sealed run record.

The run directory (contract):
- ``config.yaml``: the resolved config;
- ``metrics.jsonl``: one JSON line per completed epoch;
- ``activations.npz``: eq. 12 mean activation per capsule type, arrays named
  ``val/epoch003/conv2`` (every validation epoch) and ``test/epoch010/conv2``;
- ``checkpoint.pt``: written at the end of every epoch, the resume point;
- ``record.json``: the final record (see :func:`build_record`), sealed with a checksum.

Re-running on the same directory returns a finished record untouched, resumes
from a checkpoint, or (with one warning line) starts again when either is corrupt.
A run that diverges, runs out of memory or fails still ends with a record;
bad input (UserError) and interrupts (Ctrl-C, SIGTERM) propagate.

Example::

    record = run(cfg, Path("runs/quickstart/seed0"), spec_hash="3f2a9c", progress=False)
    record["status"], record["metrics"]["test_accuracy"], record["metrics"]["avg_dead_conv"]
"""

from __future__ import annotations

import gc
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from capsbench import numerics
from capsbench.env import git_commit
from capsbench.errors import OutputError, UserError
from capsbench.io import write_text
from capsbench.metrics.grad_norms import GradNorms
from capsbench.metrics.layers import capsule_layers
from capsbench.metrics.system import peak_memory_mb, reset_peak_memory
from capsbench.results.run_record import RUN_RECORD_VERSION, read_record, write_record
from capsbench.runlock import run_lock
from capsbench.train.checkpoint import load_checkpoint, save_checkpoint
from capsbench.train.display import Display
from capsbench.train.loop import Trainer, evaluate, train_epoch
from capsbench.train.optim import build_optimizer, build_scheduler
from capsbench.train.parts import build_model, build_run_loss
from capsbench.train.precise_bn import recompute_bn_statistics
from capsbench.train.rng import epoch_generator, rng_state, seed_everything, set_rng_state
from capsbench.train.signals import StopFlag, sigterm_as_interrupt
from capsbench.train.state import RunState

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_data(cfg_data):
    """``capsbench.data.build_data``, imported when a run starts (tests may replace this name)."""
    from capsbench.data import build_data as _build_data

    return _build_data(cfg_data)


def run(cfg, run_dir: str | Path, *, spec_hash: str, progress: bool = True) -> dict:
    """Train one run described by ``cfg`` in ``run_dir`` and return its (sealed) record."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    run_dir = Path(run_dir)
    display = Display(progress=progress and cfg.output.progress, quiet=cfg.output.quiet)
    try:
        finished = _finished_record(run_dir / "record.json", spec_hash, cfg.seed, display)
        if finished is not None:
            display.info(f"{run_dir}: already finished ({finished['status']}), skipped")
            return finished
        # one process trains a run at a time; another one holding it raises RunBusy (its caller skips the run)
        with run_lock(run_dir):
            # another process may have finished it between the look above and the lock: never train it twice
            finished = _finished_record(run_dir / "record.json", spec_hash, cfg.seed, display, warn=False)
            if finished is not None:
                display.info(f"{run_dir}: already finished ({finished['status']}), skipped")
                return finished
            write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
            # the record names the code this process runs (cached): read now, not when the record is written,
            # which can be hours later, after the checkout has moved on
            git_commit()
            device = resolve_device(cfg.device)
            if cfg.output.tensorboard:
                display.open_tensorboard(run_dir / "tensorboard")
            with numerics.applied(str(cfg.numerics)), _determinism(cfg.deterministic, device), \
                    sigterm_as_interrupt() as stop:
                return _Run(cfg, run_dir, spec_hash, device, display, stop).execute()
    finally:
        display.close()


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else is checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {name!r} requested but CUDA is not available here; use device=auto or device=cpu")
    return device


def _finished_record(path: Path, spec_hash: str, seed: int, display: Display, warn: bool = True) -> dict | None:
    if not path.exists():
        return None
    record = read_record(path)
    if record is None:
        if warn:
            display.warn(f"{path} is corrupt (unreadable or checksum mismatch); running again")
        return None
    if record.get("spec_hash") != spec_hash or record.get("seed") != seed:
        if warn:
            display.warn(
                f"{path} belongs to another run (spec {record.get('spec_hash')}, seed {record.get('seed')}); "
                "running again"
            )
        return None
    return record


@contextmanager
def _determinism(enabled: bool, device: torch.device):
    """Deterministic kernels for the duration of the run; the previous global settings come back after."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if device.type == "cpu" and enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = bool(enabled)
        torch.backends.cudnn.benchmark = not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


@dataclass
class _Parts:
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    loss_name: str
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None


class _Run:
    """One execution of a run: builds everything, trains epoch by epoch, writes the record."""

    def __init__(self, cfg, run_dir: Path, spec_hash: str, device: torch.device, display: Display, stop: StopFlag):
        self.cfg, self.run_dir, self.spec_hash = cfg, run_dir, spec_hash
        self.device, self.display, self.stop = device, display, stop
        self.state = RunState()
        self.parts: _Parts | None = None
        self.trainer: Trainer | None = None
        self.num_classes: int | None = None
        self._last_test = None  # (EpochResult, dead summary) of the latest test epoch
        self.saved_epoch = 0  # the epoch checkpoint.pt holds (0: none yet)
        self.started = time.perf_counter()

    # -- building ---------------------------------------------------------------------------
    def _build(self, data) -> _Parts:
        cfg = self.cfg
        seed_everything(cfg.seed)  # right before the model: its init never depends on what ran earlier
        model = build_model(cfg, data, self.device)
        loss_name, loss_fn = build_run_loss(cfg, model)
        optimizer = build_optimizer(model.parameters(), cfg.train.optimizer)
        scheduler = build_scheduler(optimizer, cfg.train.scheduler, cfg.train.epochs)
        # train.amp, max_steps_per_epoch and grad_clip were checked against config.py when the spec loaded
        scaler = torch.amp.GradScaler(self.device.type) if cfg.train.amp == "fp16" else None
        return _Parts(model, loss_fn, loss_name, optimizer, scheduler, scaler)

    def _resume(self, data) -> None:
        """Load the checkpoint when it is usable; otherwise warn once and start from scratch."""
        path = self.run_dir / "checkpoint.pt"
        if not path.exists():
            return
        ckpt, why = load_checkpoint(path, spec_hash=self.spec_hash, seed=self.cfg.seed)
        if ckpt is not None:
            try:
                p = self.parts
                p.model.load_state_dict(ckpt["model"])
                p.optimizer.load_state_dict(ckpt["optimizer"])
                p.scheduler.load_state_dict(ckpt["scheduler"])
                if p.scaler is not None and ckpt.get("scaler"):
                    p.scaler.load_state_dict(ckpt["scaler"])
                self.state = RunState.from_checkpoint(ckpt["telemetry"])
                set_rng_state(ckpt["rng"])
            except Exception as exc:  # noqa: BLE001 - any mismatch means "start again", never a crash
                ckpt, why = None, f"does not fit this model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        if ckpt is None:
            self.display.warn(f"{path} {why}; starting from scratch")
            self.parts = self._build(data)  # a failed load may have left the model half-overwritten
            self.state = RunState()
            return
        self.state.resumes.append(self.state.epoch)
        self.saved_epoch = self.state.epoch
        self.display.info(f"resuming {path} after epoch {self.state.epoch}")

    # -- running ----------------------------------------------------------------------------
    def execute(self) -> dict:
        cfg = self.cfg
        status, error, diverged_epoch = "ok", None, None
        try:
            seed_everything(cfg.seed)
            data = build_data(cfg.data)
            self.num_classes = data.num_classes
            if len(data.train) == 0:
                raise UserError(
                    f"data: the training split of '{cfg.data.name}' is empty; check data.subset and data.val_size"
                )
            self.parts = self._build(data)
            self._resume(data)
            if self.state.epoch == 0:  # from scratch: leftovers of an earlier attempt must not linger
                for name in ("metrics.jsonl", "activations.npz"):
                    (self.run_dir / name).unlink(missing_ok=True)
            else:
                self.state.write_outputs(self.run_dir)
            diverged_epoch = self._train(data)
            if diverged_epoch is not None:
                status = "diverged"
            else:
                self._final_test(data)
        except UserError:
            raise
        except torch.OutOfMemoryError as exc:
            status, error = "oom", _one_line(exc)
        except Exception as exc:  # noqa: BLE001 - a failed run still gets a record; the caller sets the exit code
            traceback.print_exc()
            status, error = "failed", _one_line(exc)
        if status == "oom":
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        with self._keeping_checkpoint("writing the record"):
            record = write_record(self.run_dir / "record.json", self._record(status, error, diverged_epoch))
        self.display.info(
            f"{self.run_dir}: {status}"
            + (
                f", test accuracy {record['metrics']['test_accuracy']:.4f}"
                if record["metrics"].get("test_accuracy") is not None
                else ""
            )
            + (f" ({error})" if error else "")
        )
        return record

    @contextmanager
    def _keeping_checkpoint(self, what: str):
        """A write that fails (full disk, quota, permissions) stops the run with one line: what was kept.

        The files are written atomically, so the previous checkpoint is intact and the same command
        resumes from it; no record is written (there is nothing wrong with the run itself).
        """
        try:
            yield
        except OutputError as exc:
            kept = (
                f"checkpoint.pt of epoch {self.saved_epoch} is intact; free space and run the same command to resume"
                if self.saved_epoch
                else "no checkpoint was saved yet; free space and run the same command again"
            )
            raise OutputError(f"{exc} ({what}); {kept}") from None

    def _trainer(self) -> Trainer:
        p, cfg = self.parts, self.cfg
        train_model = torch.compile(p.model) if cfg.train.compile else p.model
        return Trainer(
            model=p.model,
            train_model=train_model,
            loss_fn=p.loss_fn,
            optimizer=p.optimizer,
            device=self.device,
            amp_dtype=AMP_DTYPES[cfg.train.amp],
            scaler=p.scaler,
            grad_clip=cfg.train.grad_clip,
            grad_norms=GradNorms(p.model, cfg.metrics.grad_norm_every),
            stop=self.stop,
            step=self.state.step,
        )

    def _loader(self, dataset, batch_size: int, generator: torch.Generator | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=generator is not None,
            generator=generator,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def _train(self, data) -> int | None:
        """Train the remaining epochs; return the epoch that diverged, or None."""
        cfg, st, p = self.cfg, self.state, self.parts
        epochs, threshold = cfg.train.epochs, cfg.metrics.dead_threshold
        t = self.trainer = self._trainer()
        val_loader = self._loader(data.val, cfg.train.eval_batch_size)
        for epoch in range(st.epoch + 1, epochs + 1):
            self.stop.check()
            reset_peak_memory(self.device)
            start = time.perf_counter()
            lr = p.optimizer.param_groups[0]["lr"]
            loader = self._loader(data.train, cfg.train.batch_size, epoch_generator(cfg.seed, epoch))
            steps = (
                len(loader)
                if cfg.train.max_steps_per_epoch is None
                else min(len(loader), cfg.train.max_steps_per_epoch)
            )
            with self.display.bar(f"epoch {epoch}/{epochs}", steps) as advance:
                tr = train_epoch(t, loader, epoch=epoch, epochs=epochs, steps=steps, advance=advance)
            if tr.diverged:
                return epoch
            recompute_bn_statistics(  # no-op unless train.precise_bn > 0
                p.model, data.train, images=cfg.train.precise_bn, batch_size=cfg.train.batch_size,
                device=self.device, autocast=t.autocast,
            )
            val = evaluate(
                t, val_loader, progress=epoch / epochs, threshold=threshold, mechanism=cfg.metrics.mechanism
            )
            if val.diverged:
                return epoch
            test = self._test(data, t, epoch) if cfg.train.test_every_epoch else None
            p.scheduler.step()
            self._end_epoch(epoch, lr, t, tr, val, test, time.perf_counter() - start)
        return None

    def _test(self, data, t: Trainer, epoch: int):
        test = evaluate(
            t,
            self._loader(data.test, self.cfg.train.eval_batch_size),
            progress=epoch / self.cfg.train.epochs,
            threshold=self.cfg.metrics.dead_threshold,
        )
        return test

    def _end_epoch(self, epoch, lr, t: Trainer, tr, val, test, seconds: float) -> None:
        st = self.state
        val_summary = val.summary
        grad_mean, grad_last = t.grad_norms.flush()
        peak = peak_memory_mb(self.device)
        line = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": tr.loss,
            "train_accuracy": tr.accuracy,
            "val_loss": val.loss,
            "val_accuracy": val.accuracy,
            "avg_dead_conv": val_summary["avg_dead_conv"],
            "layers": {n: {k: v for k, v in s.items() if k != "types"} for n, s in val_summary["layers"].items()},
            "grad_norms": grad_mean,  # mean over this epoch's samples
            "mechanism": val.mechanism,  # validation epoch, capsbench.metrics.mechanism ({} when off)
            "images_per_s": tr.images / tr.seconds if tr.seconds > 0 else None,
            "train_s": tr.seconds,
            "eval_s": val.seconds + (test.seconds if test else 0.0),
            "epoch_s": seconds,
            "peak_memory_mb": peak,
            "step": t.step,
        }
        arrays = {f"val/epoch{epoch:03d}/{n}": a for n, a in val.means.items()}
        if test is not None:
            test_summary = test.summary
            line.update(
                test_loss=test.loss, test_accuracy=test.accuracy, test_avg_dead_conv=test_summary["avg_dead_conv"]
            )
            arrays.update({f"test/epoch{epoch:03d}/{n}": a for n, a in test.means.items()})
            self._last_test = (test, test_summary)
        st.add_epoch(line, arrays)
        st.step = t.step
        st.val_summary = val_summary
        st.grad_norms = grad_last or st.grad_norms
        st.train_images += tr.images
        st.train_seconds += tr.seconds
        st.epoch_seconds += seconds
        st.peak_memory_mb = max(st.peak_memory_mb, peak)
        with self._keeping_checkpoint(f"saving epoch {epoch}"):
            st.write_outputs(self.run_dir)
            self._checkpoint()
        self.saved_epoch = epoch
        self.display.epoch_line(line)
        self.stop.check()

    def _checkpoint(self) -> None:
        p = self.parts
        state = self.state
        wall = state.wall_s
        state.wall_s = wall + time.perf_counter() - self.started  # time spent up to this save, all attempts
        save_checkpoint(
            self.run_dir / "checkpoint.pt",
            {
                "spec_hash": self.spec_hash,
                "seed": self.cfg.seed,
                "epoch": state.epoch,
                "model": p.model.state_dict(),
                "optimizer": p.optimizer.state_dict(),
                "scheduler": p.scheduler.state_dict(),
                "scaler": p.scaler.state_dict() if p.scaler is not None else None,
                "rng": rng_state(),
                "telemetry": state.to_checkpoint(),
            },
        )
        state.wall_s = wall

    def _final_test(self, data) -> None:
        """The test epoch at the end (reused from the last epoch when testing every epoch)."""
        cfg, st = self.cfg, self.state
        last = self._last_test
        if last is None or st.epoch != cfg.train.epochs:
            test = self._test(data, self.trainer, st.epoch)
            last = (test, test.summary)
            st.activations.update({f"test/epoch{st.epoch:03d}/{n}": a for n, a in test.means.items()})
            st.write_outputs(self.run_dir)
        self._last_test = last

    # -- the record -------------------------------------------------------------------------
    def _record(self, status: str, error: str | None, diverged_epoch: int | None) -> dict:
        return build_record(
            cfg=self.cfg,
            spec_hash=self.spec_hash,
            run_id=self.run_dir.name,
            state=self.state,
            test=self._last_test,
            status=status,
            error=error,
            diverged_epoch=diverged_epoch,
            model=self.parts.model if self.parts else None,
            num_classes=self.num_classes,
            loss_name=self.parts.loss_name if self.parts else None,
            device=self.device,
            wall_s=self.state.wall_s + time.perf_counter() - self.started,
        )


def build_record(
    *, cfg, spec_hash, run_id, state: RunState, test, status, error, diverged_epoch, model, loss_name, device, wall_s,
    num_classes: int | None = None,
) -> dict:
    """The run record (schema_version 1); ``seal`` adds the checksum when it is written."""
    from capsbench.env import environment

    last = state.history[-1] if state.history else {}
    test_result, test_summary = test if test is not None else (None, None)
    val_summary = state.val_summary or {"layers": {}, "avg_dead_conv": None}
    metrics = {
        "test_accuracy": test_result.accuracy if test_result else None,
        "test_loss": test_result.loss if test_result else None,
        "avg_dead_conv": test_summary["avg_dead_conv"] if test_summary else None,
        "val_accuracy": last.get("val_accuracy"),
        "val_loss": last.get("val_loss"),
        "val_avg_dead_conv": val_summary["avg_dead_conv"],
        "train_accuracy": last.get("train_accuracy"),
        "train_loss": last.get("train_loss"),
        "best_val_accuracy": state.best_val_accuracy,
        "best_epoch": state.best_epoch,
        "final_epoch": state.epoch,
        "layers": {"test": test_summary["layers"] if test_summary else {}, "val": val_summary["layers"]},
        # forward order of the capsule layers: JSON objects are written with sorted keys
        "layer_order": [layer.name for layer in capsule_layers(model)] if model is not None else [],
        "grad_norms": state.grad_norms,
        "mechanism": last.get("mechanism") or {},  # the last validation epoch's (every epoch: metrics.jsonl)
    }
    epochs_run = len(state.history)
    return {
        "schema_version": RUN_RECORD_VERSION,
        "spec": cfg.name,
        "spec_hash": spec_hash,
        "run_id": run_id,
        "seed": cfg.seed,
        "protocol": cfg.protocol,
        "protocol_version": cfg.protocol_version,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "status": status,
        "error": error,
        "diverged_epoch": diverged_epoch,
        "loss": loss_name,
        "metrics": metrics,
        "timings": {
            "images_per_s": state.train_images / state.train_seconds if state.train_seconds > 0 else None,
            "epoch_s": state.epoch_seconds / epochs_run if epochs_run else None,
            "wall_s": wall_s,
        },
        "peak_memory_mb": max(state.peak_memory_mb, peak_memory_mb(device)),
        "num_params": sum(p.numel() for p in model.parameters()) if model is not None else None,
        "num_classes": num_classes,
        "resumes": list(state.resumes),
        "environment": {
            **environment(str(device)),
            "routing_impl": routing_implementations(model),
            "routing_backend": routing_backends(model),
        },
    }


def routing_implementations(model) -> dict[str, str]:
    """Which routing path (``reference`` or ``fused``) each routed layer last ran, by layer name.

    Recorded like the device: ``model.routing_impl`` is not in the spec hash (both paths compute
    the same maths), but their rounding differs, so a record says which one produced it.
    """
    return _layer_attribute(model, "last_impl")


def routing_backends(model) -> dict[str, str]:
    """Which code ran each routed layer last, by layer name: ``torch``, or a compiled kernel such as
    ``c-avx512`` (the CPU EM kernel built for AVX-512) or ``triton``.

    ``routing_impl`` says which path (``fused`` serves both the blockwise PyTorch code and the
    compiled kernels); this says which code, so records from the two are told apart.
    """
    return _layer_attribute(model, "last_backend")


def _layer_attribute(model, name: str) -> dict[str, str]:
    if model is None:
        return {}
    layers = capsule_layers(model)
    return {info.name: getattr(info.module, name) for info in layers if getattr(info.module, name, None)}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
