"""Run a sweep on a SLURM cluster through submitit: one job array, one array task per run.

Resources come from the spec's ``executor`` section or the command line
(``--executor slurm executor.partition=gpu executor.time_min=600``): ``partition``,
``time_min``, ``gpus`` (per task; none is asked for when every run has ``device: cpu``),
``cpus``, ``mem_gb``; ``--jobs N`` (or ``executor.jobs`` > 1) caps the tasks running at
once. ``executor.options`` holds the rest:
- ``wait`` (default true): wait for the array and print the results table; false
  submits and returns (follow with ``capsbench status``);
- ``poll_s`` (default 30): the longest pause between two ``squeue`` calls while waiting;
- ``max_num_timeout`` (default 3): how many times a task that reaches its time limit is
  requeued to continue from its checkpoint;
- ``python``: the command that starts Python on the nodes (default: this interpreter);
- any submitit ``AutoExecutor`` parameter, e.g. ``slurm_account``, ``slurm_qos``,
  ``slurm_constraint``, ``slurm_setup`` (shell lines run before the task).

The run directories must be on a file system the nodes share with this machine; so
must ``<out>/<spec name>/slurm/`` (submitit's pickles and each task's stdout/stderr).

Resume: every run writes ``checkpoint.pt`` at the end of each epoch. Before its time
limit (and on preemption, where the cluster sends the job's signal) submitit calls
:meth:`RunTask.checkpoint`, which resubmits the same run; the requeued task finds the
checkpoint and goes on from the last finished epoch. A job that is cancelled instead
leaves the checkpoint behind; running the same command again submits that run again
and it resumes. Finished runs are never submitted again.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from capsbench import runlock
from capsbench.errors import UserError
from capsbench.executors import squeue
from capsbench.executors.local import placeholder
from capsbench.executors.manifest import Manifest
from capsbench.executors.plan import Planned, epochs_done, payload, read_own_record, split, sweep_dir_for
from capsbench.runlock import BUSY, RunBusy
from capsbench.spec import RunSpec

RECORD_GRACE_S = 90  # how long a COMPLETED task's record may take to appear on a shared file system
OUR_OPTIONS = {"wait": True, "poll_s": 30.0, "max_num_timeout": 3, "python": None}


class RunTask(submitit.helpers.Checkpointable):
    """One run, as submitit pickles it: the payload (config, spec hash, run directory) and nothing else."""

    def __init__(self, data: dict):
        self.data = data

    def __call__(self) -> dict:
        from capsbench.executors.worker import limit_threads, run_payload

        limit_threads(self.data)
        try:
            record = run_payload(self.data, progress=False)
        except RunBusy as busy:  # another process trains this run (a second submission): leave it to that one
            print(busy, file=sys.stderr)
            return {"run_id": busy.directory.name, "status": BUSY}
        return {"run_id": record.get("run_id"), "status": record.get("status")}

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit before a requeue (time limit, preemption).

        The state worth keeping is already on disk: ``checkpoint.pt`` from the last
        finished epoch. The requeued task is this same run, which resumes from it.
        """
        return submitit.helpers.DelayedSubmission(RunTask(self.data))


@dataclass
class Settings:
    """Everything submitit is told, checked up front so a typo fails before anything is submitted."""

    parameters: dict[str, Any]
    wait: bool = True
    poll_s: float = 30.0
    max_num_timeout: int = 3
    python: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_runs(cls, runs: list[RunSpec], jobs: int | None) -> Settings:
        from omegaconf import OmegaConf

        ex = runs[0].config.executor
        options = OmegaConf.to_container(ex.options, resolve=True) if not isinstance(ex.options, dict) else ex.options
        options = dict(options or {})

        def need(ok: bool, key: str, expected: str, value: Any) -> None:
            if not ok:
                raise UserError(f"{key}: expected {expected}, got {value!r}")

        # executor.time_min, cpus, gpus and mem_gb were checked against config.py when the spec loaded
        params: dict[str, Any] = {
            "name": f"capsbench-{runs[0].config.name}",
            "timeout_min": int(ex.time_min),
            "cpus_per_task": int(ex.cpus),
        }
        if ex.mem_gb:
            params["mem_gb"] = int(ex.mem_gb)
        # a run pinned to the CPU never touches a GPU: do not hold one on the cluster
        if ex.gpus and not all(str(r.config.device) == "cpu" for r in runs):
            params["gpus_per_node"] = int(ex.gpus)
        if ex.partition:
            params["slurm_partition"] = str(ex.partition)
        parallel = jobs if jobs is not None else (int(ex.jobs) if int(ex.jobs) > 1 else None)
        if parallel is not None:
            need(parallel >= 1, "--jobs", "an integer >= 1", parallel)
            params["slurm_array_parallelism"] = int(parallel)
        ours = {key: options.pop(key, default) for key, default in OUR_OPTIONS.items()}
        need(isinstance(ours["wait"], bool), "executor.options.wait", "true or false", ours["wait"])
        need(
            isinstance(ours["poll_s"], int | float) and ours["poll_s"] > 0,
            "executor.options.poll_s",
            "seconds > 0",
            ours["poll_s"],
        )
        need(
            isinstance(ours["max_num_timeout"], int) and ours["max_num_timeout"] >= 0,
            "executor.options.max_num_timeout",
            "an integer >= 0",
            ours["max_num_timeout"],
        )
        return cls(params, ours["wait"], float(ours["poll_s"]), ours["max_num_timeout"], ours["python"], options)

    def executor(self, folder: Path) -> submitit.AutoExecutor:
        kwargs: dict[str, Any] = {"slurm_max_num_timeout": self.max_num_timeout}
        if self.python:
            kwargs["slurm_python"] = str(self.python)
        try:
            ex = submitit.AutoExecutor(folder=folder, cluster="slurm", **kwargs)
        except RuntimeError as exc:
            raise UserError(
                f"--executor slurm: no SLURM here ({str(exc).splitlines()[0]}); run on a login node of the "
                "cluster, or use --executor local"
            ) from None
        ex.update_parameters(**self.parameters)
        for key, value in self.extra.items():
            try:
                ex.update_parameters(**{key: value})
            except Exception as exc:  # noqa: BLE001 - submitit raises NameError/ValueError/AssertionError
                raise UserError(
                    f"executor.options.{key}: not accepted by submitit ({str(exc).splitlines()[0][:200]}); "
                    "use AutoExecutor names such as slurm_account, slurm_qos, slurm_constraint, slurm_setup"
                ) from None
        return ex


class SlurmExecutor:
    """Submits what a sweep still needs as one job array, then (by default) waits for it."""

    def __init__(self, quiet: bool = False, jobs: int | None = None, retry_failed: bool = False):
        self.quiet = quiet
        self.jobs = jobs
        self.retry_failed = retry_failed
        self._warned: set[str] = set()
        self._ended_at: dict[str, float] = {}

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def run_all(self, runs: list[RunSpec], out: Path) -> list[dict]:
        out = Path(out).resolve()  # compute nodes start elsewhere: every path they see is absolute
        settings = Settings.from_runs(runs, self.jobs)
        todo, finished = split(runs, out, retry_failed=self.retry_failed)
        records = {p.label: p.record for p in finished}
        waiting: dict[str, tuple[Planned, str, Path]] = {}  # label -> (planned, job id, submitit folder)
        by_sweep: dict[Path, list[Planned]] = {}
        for p in todo:
            by_sweep.setdefault(sweep_dir_for(out, p.run), []).append(p)
        for sweep_dir, planned in by_sweep.items():
            waiting.update(self._submit(sweep_dir, planned, settings))
        if finished:
            failed = sum(1 for p in finished if p.state == "failed")
            hint = f" ({failed} of them failed: --retry-failed runs those again)" if failed else ""
            self.say(f"{len(finished)} run(s) already finished, skipped{hint}")
        if not todo:
            self.say(f"nothing to submit: all {len(runs)} run(s) have a record")
        if not waiting:
            return [records[r.label] for r in runs]
        if not settings.wait:
            dirs = " ".join(str(d) for d in by_sweep)
            self.say(f"not waiting (executor.options.wait=false); follow with: capsbench status {dirs}")
            return [records[r.label] for r in runs if r.label in records]
        records.update(self._wait(waiting, settings.poll_s))
        return [records[r.label] for r in runs]

    # -- submission ---------------------------------------------------------------------------
    def _submit(self, sweep_dir: Path, planned: list[Planned], settings: Settings) -> dict[str, tuple]:
        manifest = Manifest.load(sweep_dir)
        manifest.spec = str(planned[0].run.config.name)
        for p in planned:
            manifest.add_run(
                p.label,
                run_id=p.run.run_id,
                spec_hash=p.run.spec_hash,
                seed=p.run.seed,
                point=p.run.point,
                epochs=int(p.run.config.train.epochs),
            )
        folder = sweep_dir / "slurm"
        # a run whose job is still queued or running is followed, never submitted twice
        known = {p.label: manifest.runs[p.label].get("job_id") for p in planned}
        states = squeue.job_states([j for j in known.values() if j]) or {}
        attached = {p.label: (p, known[p.label], folder) for p in planned if squeue.is_live(states.get(known[p.label]))}
        fresh = [p for p in planned if p.label not in attached]
        if attached:
            self.say(f"{len(attached)} run(s) already queued or running on SLURM: following them, not resubmitting")
        submitted = {}
        if fresh:
            ex = settings.executor(folder)
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's error; ours is one line
                    jobs = ex.submit_array([RunTask(payload(p)) for p in fresh])
            except submitit.core.utils.FailedJobError as exc:
                lines = [line for line in str(exc).splitlines() if "error" in line.lower()] or str(exc).splitlines()
                raise UserError(
                    f"--executor slurm: sbatch refused the job ({lines[-1].strip()[:300]}); check executor.partition, "
                    "time_min, gpus, cpus and mem_gb against the cluster (sinfo)"
                ) from None
            for p, job in zip(fresh, jobs):
                manifest.set_job(p.label, str(job.job_id))
                submitted[p.label] = (p, str(job.job_id), folder)
            array = str(jobs[0].job_id).split("_")[0]
            resumes = sum(1 for p in fresh if p.state == "interrupted")
            self.say(
                f"submitted {len(fresh)} run(s) as SLURM job {array}"
                + (f" ({resumes} resuming from a checkpoint)" if resumes else "")
                + f"; logs: {folder}"
            )
        manifest.save()
        return {**attached, **submitted}

    # -- waiting ------------------------------------------------------------------------------
    def _wait(self, waiting: dict[str, tuple[Planned, str, Path]], poll_max: float) -> dict[str, dict]:
        settled: dict[str, dict] = {}
        last_states: dict[str, tuple[str, str]] = {}
        poll, shown = 1.0, None
        try:
            while len(settled) < len(waiting):
                states = squeue.job_states([job for _, job, _ in waiting.values()])  # before the records: see below
                for label, (p, job_id, folder) in waiting.items():
                    if label in settled:
                        continue
                    # a task writes its record before its job leaves the queue, so a job gone from
                    # the queue with no record on disk really ended without one
                    record = read_own_record(p.directory, p.run.spec_hash, p.run.seed)
                    if record is not None:
                        settled[label] = record
                    elif states is not None and not squeue.is_live(states.get(job_id)):
                        holder = runlock.holder(p.directory)
                        if holder is not None:  # our task skipped it: another process is training it
                            settled[label] = placeholder(p, holder, status=BUSY)
                            continue
                        state = states.get(job_id) or last_states.get(job_id)
                        if self._record_may_be_on_its_way(p, job_id, state):
                            continue
                        settled[label] = self._ended(p, job_id, folder, state)
                    elif states is not None and job_id in states:
                        last_states[job_id] = states[job_id]
                        self._warn_stuck(job_id, states[job_id])
                line = self._progress(waiting, settled, states or {})
                if line != shown and not self.quiet:
                    self.say(line)
                    shown = line
                if len(settled) < len(waiting):
                    time.sleep(poll)
                    poll = min(poll_max, poll * 1.5)
        except KeyboardInterrupt:
            left = len(waiting) - len(settled)
            self.say(
                f"stopped waiting: {left} run(s) go on on SLURM; `capsbench status` follows them, "
                "and the same command again waits for them"
            )
            raise
        return settled

    def _record_may_be_on_its_way(self, p: Planned, job_id: str, state: tuple[str, str] | None) -> bool:
        """A task that COMPLETED wrote its record, but a shared file system may show it here a little later.

        NFS clients cache directory listings for up to a minute; look again (listing the
        folder refreshes that cache) for ``RECORD_GRACE_S`` before calling the run unfinished.
        """
        if state is not None and state[0] != "COMPLETED":
            return False  # cancelled, failed, timed out...: no record is coming
        first = self._ended_at.setdefault(job_id, time.monotonic())
        try:
            os.listdir(p.directory)
        except OSError:
            pass
        return time.monotonic() - first < RECORD_GRACE_S

    def _progress(self, waiting, settled, states) -> str:
        running = sum(
            1 for label, (_, job, _) in waiting.items() if label not in settled and squeue.is_running(states.get(job))
        )
        ok = sum(1 for r in settled.values() if r.get("status") == "ok")
        return (
            f"slurm: {len(settled)}/{len(waiting)} settled ({ok} ok, {len(settled) - ok} not ok), "
            f"{running} running, {len(waiting) - len(settled) - running} pending"
        )

    def _ended(self, p: Planned, job_id: str, folder: Path, state: tuple[str, str] | None) -> dict:
        """A job that left the queue without a record: interrupted (resumable) or failed to start."""
        log = folder / f"{job_id}_0_log.err"
        how = state[0].lower() if state else "ended"
        why = f"{_last_meaningful_line(log)}; log: {log}" if log.exists() else "it never started"
        if state and state[1] and state[1] != "None":
            why += f"; last reason: {state[1]}"
        if (p.directory / "checkpoint.pt").exists():
            done, total = epochs_done(p.directory), p.run.config.train.epochs
            return placeholder(
                p,
                f"job {job_id} {how} after epoch {done} of {total}; run the same command again to resume ({why})",
                status="interrupted",
            )
        return placeholder(p, f"job {job_id} {how} without a record ({why})")

    def _warn_stuck(self, job_id: str, state: tuple[str, str] | None) -> None:
        """Once per job: a pending reason that means the request cannot be met as it stands."""
        if state is None or state[0] != "PENDING" or state[1] not in STUCK or job_id in self._warned:
            return
        self._warned.add(job_id)
        self.say(
            f"warning: job {job_id} is pending with reason {state[1]}: the cluster cannot run it as requested; "
            f"cancel it (scancel {job_id.split('_')[0]}) and check executor.partition, time_min, gpus, cpus, mem_gb"
        )


# Pending reasons after which a job will not start unless someone changes the request or the cluster.
STUCK = (
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "PartitionDown",
    "PartitionInactive",
    "BadConstraints",
    "InvalidAccount",
    "InvalidQOS",
    "DependencyNeverSatisfied",
)


def _last_meaningful_line(path: Path) -> str:
    """The last line of a task's stderr that says something (submitit's and srun's own lines skipped)."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    useful = [line for line in lines if "submitit" not in line and not line.startswith(("srun:", "slurmstepd"))]
    return (useful or lines or ["empty log"])[-1][:300]
