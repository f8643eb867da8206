"""One process trains a run at a time: a per-run lock in the run directory.

Two ``capsbench run`` commands on the same output folder (two terminals, a re-submitted SLURM
array) would otherwise both train the same run and race on every file. The runner holds this lock
from the moment it decides to train until the run's record is written; a second process that finds
it held skips that run with one line and goes on with the others.

Two kinds of lock, chosen per run directory:
- ``flock`` (file ``.lock``): an advisory ``fcntl.flock`` on a local file system. The kernel
  releases it when the holder exits in any way, ``kill -9`` included, so it is never stale.
- ``lease`` (file ``.lease``): for network file systems (NFS, Lustre, GPFS, CIFS, ...), where
  ``flock`` is emulated, unsupported or not seen by other nodes. The holder creates the file
  exclusively with its host, pid and a token, and touches it every ``ttl/4`` seconds (a heartbeat
  thread); a lease not touched for ``ttl`` seconds (``CAPSBENCH_LEASE_TTL_S``, default 120) has
  expired and the next process takes it over. A lease of a dead process on the same host is
  taken over at once. Nodes' clocks must agree to well within the TTL.

``CAPSBENCH_RUN_LOCK`` picks the kind: ``auto`` (default: ``flock`` on the local file systems in
``LOCAL_FS``, ``lease`` on anything else, read from ``/proc/self/mountinfo``), ``flock`` or
``lease``. Both files are removed when the run ends; ``capsbench status`` shows a run whose lock is
held as ``running``.

Example::

    with run_lock(run_dir):       # raises RunBusy(directory, "pid 4242 on node7") when held elsewhere
        train()
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from capsbench.errors import UserError
from capsbench.io import output_error

LOCK_FILE, LEASE_FILE = ".lock", ".lease"
DEFAULT_TTL_S = 120.0
# File systems where flock is local and the kernel releases it on exit; anything else gets a lease.
LOCAL_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "ramfs", "bcachefs"})
MODES = ("auto", "flock", "lease")
# Exit code of a command that skipped runs other processes were training, all else done (sysexits'
# EX_TEMPFAIL: "try again later", when their records will be there).
EXIT_BUSY = 75
BUSY = "running"  # the status a skipped run shows in the results table (it has no record of its own yet)


class RunBusy(Exception):
    """The run is being trained by another process (not an error of this one: it skips the run)."""

    def __init__(self, directory: Path, holder: str):
        super().__init__(f"{directory}: in progress in another process ({holder}), skipped")
        self.directory, self.holder = Path(directory), holder


# ----------------------------------------------------------------------------- which kind


def fs_type(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The file system type of the mount holding ``path`` (the longest mount point above it), or None."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    target = str(Path(path).resolve())
    best, best_type = "", None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, best_type = mount, right.split()[0]
    return best_type


def lock_mode(directory: Path, env: dict | None = None) -> str:
    """``flock`` or ``lease`` for ``directory`` (see the module docstring)."""
    mode = (os.environ if env is None else env).get("CAPSBENCH_RUN_LOCK", "auto").strip() or "auto"
    if mode not in MODES:
        raise UserError(f"CAPSBENCH_RUN_LOCK: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    return "flock" if fs_type(directory) in LOCAL_FS else "lease"


def lease_ttl(env: dict | None = None) -> float:
    raw = (os.environ if env is None else env).get("CAPSBENCH_LEASE_TTL_S", "")
    if not raw:
        return DEFAULT_TTL_S
    try:
        ttl = float(raw)
    except ValueError:
        ttl = -1.0
    if not ttl > 0:
        raise UserError(f"CAPSBENCH_LEASE_TTL_S: expected seconds > 0, got {raw!r}")
    return ttl


def _me(**extra) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%H:%M:%S"), **extra}


def describe(info: dict | None) -> str:
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since {info.get('since', '?')}"


# ----------------------------------------------------------------------------- flock


def _flock(directory: Path) -> Iterator[None]:
    path = directory / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_json(path)
            os.close(fd)
            raise RunBusy(directory, describe(info)) from None
        except OSError as exc:  # ENOLCK and friends: this file system does not do flock
            os.close(fd)
            raise UserError(
                f"{path}: flock is not supported here ({exc.strerror}); set CAPSBENCH_RUN_LOCK=lease"
            ) from None
        # the previous holder removes the file as it lets go: if ours is no longer the file on disk, retry
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_me(kind="flock")).encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding it: a waiter that opened it retries above
        os.close(fd)


def flock_held(directory: Path) -> bool:
    """Whether a live process holds ``directory``'s flock (asks the kernel, so never stale)."""
    try:
        fd = os.open(Path(directory) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


# ----------------------------------------------------------------------------- lease


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # another user's process, or a pid we cannot judge: assume alive
    return True


def _live(path: Path, now: float | None = None) -> dict | None:
    """The lease in ``path`` (its JSON) while it is live, else None (absent, expired or its process gone)."""
    try:
        touched = path.stat().st_mtime
    except OSError:
        return None
    info = _read_json(path) or {}
    ttl = float(info.get("ttl_s") or DEFAULT_TTL_S)
    if (time.time() if now is None else now) - touched > ttl:
        return None  # no heartbeat for a whole TTL
    if info.get("host") == socket.gethostname() and "pid" in info and not _pid_alive(info["pid"]):
        return None  # its process is gone (kill -9, a crash): no need to wait out the TTL
    return info


def lease_holder(directory: Path) -> dict | None:
    """The live lease of ``directory``, or None."""
    return _live(Path(directory) / LEASE_FILE)


def _take_lease(directory: Path, ttl: float) -> dict:
    path = directory / LEASE_FILE
    token = secrets.token_hex(8)
    mine = _me(kind="lease", token=token, ttl_s=ttl)
    for _ in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # atomic on NFSv3+ as well
        except FileExistsError:
            holder = lease_holder(directory)
            if holder is not None:
                raise RunBusy(directory, describe(holder)) from None
            # expired: move it aside under a name of our own, so of several contenders only one removes it
            aside = directory / f"{LEASE_FILE}.stale-{token}"
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            taken = _live(aside)
            if taken is not None:  # a contender's fresh lease replaced the stale one meanwhile: put it back
                try:
                    os.link(aside, path)
                except FileExistsError:
                    pass
                aside.unlink(missing_ok=True)
                raise RunBusy(directory, describe(taken)) from None
            aside.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(mine))
        return mine
    raise RunBusy(directory, "another process is taking over its expired lease")


def _lease(directory: Path) -> Iterator[None]:
    ttl = lease_ttl()
    mine = _take_lease(directory, ttl)
    path = directory / LEASE_FILE
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(ttl / 4):
            try:
                os.utime(path)
            except FileNotFoundError:
                print(f"warning: {path} was removed by another process; this run no longer holds it", file=sys.stderr)
                return
            except OSError as exc:
                if exc.errno not in (errno.EINTR, errno.EAGAIN):
                    print(f"warning: {path}: heartbeat failed ({exc.strerror})", file=sys.stderr)

    thread = threading.Thread(target=heartbeat, name="capsbench-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if (_read_json(path) or {}).get("token") == mine["token"]:
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the lock


@contextmanager
def run_lock(directory: str | os.PathLike) -> Iterator[None]:
    """Hold ``directory``'s run lock for the duration; raises :class:`RunBusy` when another process has it."""
    directory = Path(directory)
    take = _flock if lock_mode(directory) == "flock" else _lease
    try:
        directory.mkdir(parents=True, exist_ok=True)
        held = take(directory)
        next(held)  # acquired (or RunBusy)
    except OSError as exc:  # a folder or lock file that cannot be created: full disk, permissions
        raise output_error(directory, exc) from None
    try:
        yield
    finally:
        next(held, None)  # released


def holder(directory: str | os.PathLike) -> str | None:
    """``"pid 4242 on node7, since 20:31:02"`` when a live process holds the run's lock, else None."""
    directory = Path(directory)
    if flock_held(directory):
        return describe(_read_json(directory / LOCK_FILE))
    info = lease_holder(directory)
    return describe(info) if info is not None else None
