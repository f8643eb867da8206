"""Run a sweep on this machine: in this process one run after another, or N runs at once.

``jobs=1`` (the default) trains every run in this process. ``jobs=N`` starts up to N
worker processes (``python -m capsbench.executors.worker``), one run each, so a run
that crashes, leaks or runs out of memory takes nobody else with it. With GPUs, each
worker sees one GPU through ``CUDA_VISIBLE_DEVICES`` (round-robin over the visible
ones); CPU threads are split between the workers. A worker's output goes to
``<out>/<spec name>/logs/<label>.log``; this process prints one line per finished run.

Example::

    records = LocalExecutor(jobs=2).run_all(spec.load("specs/quickstart.yaml"), Path("runs"))
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from capsbench.cpus import threads_per_run, torch_threads, usable_cores
from capsbench.errors import UserError
from capsbench.executors.plan import (
    Planned,
    payload,
    plan,
    read_own_record,
    run_dir_for,
    set_aside,
    split,
    sweep_dir_for,
)
from capsbench.runlock import BUSY, EXIT_BUSY, RunBusy
from capsbench.spec import RunSpec
from capsbench.train.signals import sigterm_as_interrupt

__all__ = ["LocalExecutor", "run_dir_for"]

STOP_GRACE_S = 60  # after SIGTERM a worker finishes its current step; then it is killed


class LocalExecutor:
    """Runs on this machine. A run that fails is recorded and the sweep goes on."""

    def __init__(self, quiet: bool = False, jobs: int | None = None, retry_failed: bool = False):
        self.quiet = quiet
        self.jobs = jobs
        self.retry_failed = retry_failed

    def run_all(self, runs: list[RunSpec], out: Path) -> list[dict]:
        jobs = self.jobs if self.jobs is not None else int(runs[0].config.executor.jobs)
        if jobs < 1:
            raise UserError(f"--jobs: expected an integer >= 1, got {jobs}")
        if jobs == 1:
            return self._in_process(runs, Path(out))
        return _Pool(self, jobs).run(runs, Path(out))

    # -- one after another, in this process ----------------------------------------------------
    def _in_process(self, runs: list[RunSpec], out: Path) -> list[dict]:
        from capsbench.train.runner import run as run_one

        records = []
        for i, p in enumerate(plan(runs, out), 1):
            if p.state == "failed" and self.retry_failed:
                aside = set_aside(p.directory / "record.json")
                print(
                    f"{p.directory}: retrying a {p.record['status']} run (old record kept as {aside.name})",
                    file=sys.stderr,
                )
            if not self.quiet:
                point = ", ".join(f"{k}={v}" for k, v in p.run.point.items()) or "single run"
                print(f"[{i}/{len(runs)}] {p.run.config.name}: {point} -> {p.directory}", file=sys.stderr)
            cfg = p.run.config
            progress = not self.quiet and bool(cfg.output.progress) and not bool(cfg.output.quiet)
            try:
                with torch_threads(threads_per_run(cfg.executor.cpus)):
                    records.append(run_one(cfg, p.directory, spec_hash=p.run.spec_hash, progress=progress))
            except RunBusy as busy:
                print(busy, file=sys.stderr)
                records.append(placeholder(p, busy.holder, status=BUSY))
        return records


# ----------------------------------------------------------------------------- N at once


def visible_gpus() -> list[str]:
    """GPU ids a child may be given: CUDA_VISIBLE_DEVICES when set, else every GPU torch sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA means no GPUs to hand out
        return []


@dataclass
class _Worker:
    planned: Planned
    process: subprocess.Popen
    slot: int
    log: IO
    log_path: Path
    started: float


class _Pool:
    """Up to ``jobs`` worker processes; slot k uses GPU k mod (number of GPUs)."""

    def __init__(self, executor: LocalExecutor, jobs: int):
        self.executor, self.jobs = executor, jobs
        self.workers: list[_Worker] = []
        self.records: dict[str, dict] = {}
        self.bad_input: tuple[str, str] | None = None  # (label, message) of the first worker that exited 2
        self.done = self.failed = 0

    def say(self, text: str, always: bool = False) -> None:
        if always or not self.executor.quiet:
            print(text, file=sys.stderr, flush=True)

    def run(self, runs: list[RunSpec], out: Path) -> list[dict]:
        todo, finished = split(runs, out, retry_failed=self.executor.retry_failed)
        self.to_do = len(todo)
        for p in finished:
            self.records[p.label] = p.record
            self.say(f"{p.directory}: already finished ({p.record['status']}), skipped", always=True)
        wants_gpu = any(str(p.run.config.device) in ("auto", "cuda") for p in todo)
        self.gpus = visible_gpus() if wants_gpu else []
        cores = usable_cores()
        threads = threads_per_run(None, self.jobs, cores)  # each run's executor.cpus may lower its own
        if not self.gpus and min(self.jobs, len(todo)) > cores:
            self.say(f"note: {min(self.jobs, len(todo))} runs at once on {cores} usable core(s): they share cores")
        self.say(
            f"{len(todo)} run(s) to do, {len(finished)} finished; {min(self.jobs, max(len(todo), 1))} at once"
            + (f" on GPUs {','.join(self.gpus)}" if self.gpus else f", {threads} CPU thread(s) each")
        )
        queue = list(todo)
        # SIGTERM (a `kill`, a batch system) stops the workers like Ctrl-C does: none is left orphaned
        with sigterm_as_interrupt() as stop:
            try:
                while (queue and self.bad_input is None) or self.workers:  # bad input: no new starts
                    while queue and len(self.workers) < self.jobs and self.bad_input is None:
                        self._start(queue.pop(0), out, cores)
                    if not self._reap():
                        time.sleep(0.1)
                    stop.check()
            except KeyboardInterrupt:
                self._stop_all()
                raise
        if self.bad_input is not None:
            label, message = self.bad_input
            raise UserError(f"{label}: {message}")
        return [self.records[run.label] for run in runs]

    def _start(self, p: Planned, out: Path, cores: int) -> None:
        slot = min(set(range(self.jobs)) - {w.slot for w in self.workers})
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # the workers share the cores: never more threads in all than cores (OMP_NUM_THREADS of the user wins)
        env.setdefault("OMP_NUM_THREADS", str(threads_per_run(p.run.config.executor.cpus, self.jobs, cores)))
        where = "CPU"
        if self.gpus and str(p.run.config.device) in ("auto", "cuda"):  # cuda:N pins a device itself
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
            where = f"GPU {env['CUDA_VISIBLE_DEVICES']}"
        log_path = sweep_dir_for(out, p.run) / "logs" / f"{p.label}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a")  # noqa: SIM115 - closed when the worker ends
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} capsbench worker on {where}\n")
        log.flush()
        process = subprocess.Popen(
            [sys.executable, "-m", "capsbench.executors.worker"],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        try:
            process.stdin.write(json.dumps(payload(p)))
            process.stdin.close()
        except BrokenPipeError:  # the worker died at once; its exit code and log say why
            pass
        self.workers.append(_Worker(p, process, slot, log, log_path, time.perf_counter()))
        self.say(f"start {p.label} on {where} (log: {log_path})")

    def _reap(self) -> bool:
        """Collect finished workers; True when any finished."""
        ended = [w for w in self.workers if w.process.poll() is not None]
        for w in ended:
            self.workers.remove(w)
            w.log.close()
            self._finish(w, w.process.returncode)
        return bool(ended)

    def _finish(self, w: _Worker, code: int) -> None:
        p = w.planned
        record = read_own_record(p.directory, p.run.spec_hash, p.run.seed)
        seconds = time.perf_counter() - w.started
        if record is None:
            last = _last_line(w.log_path)
            if code == EXIT_BUSY:  # another process is training this run: skipped, not failed
                self.records[p.label] = placeholder(p, last.removeprefix("busy: "), status=BUSY)
                self.say(last.removeprefix("busy: "), always=True)
                return
            if code == 2:
                self.bad_input = self.bad_input or (p.label, last.removeprefix("error: "))
                error = f"bad input: {last.removeprefix('error: ')}"
            else:
                error = f"worker exited with code {code} without a record ({last}); log: {w.log_path}"
            record = placeholder(p, error)
        self.records[p.label] = record
        if record.get("status") == "ok":
            self.done += 1
        else:
            self.failed += 1
        acc = (record.get("metrics") or {}).get("test_accuracy")
        detail = f", test accuracy {acc:.4f}" if isinstance(acc, float) else ""
        detail += f" ({record['error']})" if record.get("error") else ""
        self.say(
            f"[{self.done + self.failed}/{self.to_do}] {p.label}: {record.get('status')}{detail} in {seconds:.0f} s"
            f" ({len(self.workers)} running, {self.failed} failed so far)",
            always=record.get("status") != "ok",
        )

    def _stop_all(self) -> None:
        """Ctrl-C: every worker finishes its current step and exits; its checkpoint is the resume point."""
        for w in self.workers:
            if w.process.poll() is None:
                w.process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for w in self.workers:
            try:
                w.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait()
            w.log.close()


def placeholder(p: Planned, error: str, status: str = "failed") -> dict:
    """What the summary shows for a run that ended without a record (nothing is written to disk)."""
    return {
        "run_id": p.label,
        "spec": str(p.run.config.name),
        "spec_hash": p.run.spec_hash,
        "seed": p.run.seed,
        "status": status,
        "error": error,
        "metrics": {},
    }


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"
