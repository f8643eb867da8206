"""A real one-node SLURM cluster on 127.0.0.1 for tests: munged, slurmctld and slurmd as child processes.

Everything lives in one temporary folder (key, sockets, state, spool, logs, slurm.conf)
and on free ports, so it never touches a system SLURM and two test workers can each
run their own. Clients find it through ``SLURM_CONF`` (see :attr:`LocalSlurm.env`).
Needs Debian's ``slurmctld``, ``slurmd`` and ``munge`` packages and root (SlurmUser=root).

By hand (to try ``--executor slurm``)::

    python tests/slurm_cluster.py    # prints `export SLURM_CONF=...`; Ctrl-C (or kill PID) stops the cluster
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "sinfo", "scontrol")
PACKAGES = "slurmctld slurmd munge"  # Debian; slurm-client (sbatch, squeue, ...) comes with them


class ClusterUnavailable(RuntimeError):
    """SLURM cannot start here; the message says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


class LocalSlurm:
    """``start()`` it, use :attr:`env` for clients, ``stop()`` it (by pid)."""

    def __init__(self, root: Path | None = None, cpus: int = 2):
        self.root = Path(root or tempfile.mkdtemp(prefix="capsbench-slurm-"))  # short: socket paths max 107 bytes
        self.cpus = cpus
        self.processes: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    # -- start ----------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> LocalSlurm:
        missing = [b for b in BINARIES if shutil.which(b) is None]
        if missing:
            raise ClusterUnavailable(f"{', '.join(missing)} not installed (apt-get install -y {PACKAGES})")
        if os.geteuid() != 0:
            raise ClusterUnavailable("the test cluster runs its daemons as root (SlurmUser=root); not root here")
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # munged refuses a socket folder others may write to
        try:
            self._start_munge(timeout)
            self._write_conf()
            env = dict(os.environ, **self.env)
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)], env)
            self._spawn("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)], env)
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - owned by the child
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root)
        log.close()

    def _start_munge(self, timeout: float) -> None:
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.socket = self.root / "munge.sock"
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={self.socket}",
                f"--pid-file={self.root / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={self.root / 'munged.seed'}",
            ],
        )
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"munged did not create {self.socket}: {self._tail('munged')}")
            time.sleep(0.05)

    def _write_conf(self) -> None:
        r = self.root
        host = socket.gethostname().split(".")[0]  # slurmctld only starts on the host named here
        memory = max(512, min(_memory_mb() - 512, 8192))
        lines = [
            "ClusterName=capsbenchtest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.socket}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",  # no cgroups
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",  # no slurmdbd: sacct does not work, squeue does
            "JobCompType=jobcomp/none",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SlurmdParameters=config_overrides",  # trust CPUs= below whatever the machine has
            "ReturnToService=2",
            "KillWait=5",  # seconds from SIGTERM to SIGKILL when a job is cancelled
            "MinJobAge=300",
            "JobRequeue=1",
            "EnforcePartLimits=ALL",  # refuse at submission what the partition can never run, as clusters do
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory} State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            result = self.run("sinfo", "-h", "-o", "%T", check=False)
            state = result.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.2)
        raise ClusterUnavailable(
            f"the node did not become idle in {timeout:.0f} s (state {state!r}); "
            f"slurmctld: {self._tail('slurmctld')} slurmd: {self._tail('slurmd')}"
        )

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise ClusterUnavailable(f"{name} exited with code {process.returncode}: {self._tail(name)}")

    def _tail(self, name: str) -> str:
        text = ""
        for path in (self.root / "log" / f"{name}.log", self.root / "log" / f"{name}.out"):
            if path.exists():
                text += path.read_text(errors="replace")
        lines = [line for line in text.splitlines() if "error" in line.lower() or "fatal" in line.lower()]
        return " | ".join((lines or text.splitlines() or ["no log"])[-3:])

    # -- use ------------------------------------------------------------------------------------
    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster, e.g. ``run("squeue", "-h")``."""
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=60, env=dict(os.environ, **self.env)
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
        return result

    def jobs(self) -> list[str]:
        """Ids of the jobs still pending or running."""
        out = self.run("squeue", "-h", "-r", "-o", "%i").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def wait_empty(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.jobs():
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still queued after {timeout:.0f} s: {self.jobs()}")
            time.sleep(0.2)

    # -- stop -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job (their processes outlive slurmd otherwise), then stop the daemons by pid."""
        if "slurmd" in self.processes and self.processes["slurmd"].poll() is None:
            try:
                jobs = self.jobs()
                if jobs:
                    self.run("scancel", *{j.split("_")[0] for j in jobs}, check=False)
                    self.wait_empty(timeout=30)
            except (RuntimeError, TimeoutError, subprocess.SubprocessError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops it cleanly too (background jobs ignore SIGINT)
    signal.signal(signal.SIGINT, _interrupt)
    cluster = LocalSlurm().start()
    print(f"export SLURM_CONF={cluster.conf}    # cluster folder: {cluster.root}; Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
