"""One command at a time per experiment: `run` and `resume` hold a lock inside it.

    instrument-sweep run --name c ...       # holds sweeps/c/.instrument-sweep.lock until it ends
    instrument-sweep resume c               # meanwhile: exit 2, "in use by `instrument-sweep run` (pid ...)"

    with hold(experiment, "resume") as lock:   # InputError("experiment", ...) while another holds it
        lock.previous                          # what the last holder recorded, if it never released
        lock.record(local_ray=TAG)               # what a later holder may need to clean up

    check_lockable("/scratch/me/sweeps")       # InputError("--storage", ...) where flock cannot work there

Local (and NFS) storage: an OS file lock (fcntl.flock) on LOCK_FILE in the experiment
directory, with the holder's pid, host and command written into it. The kernel releases
the lock when its holder exits, however it ends (SIGKILL included), so a crashed command
never leaves an experiment stuck. A filesystem that refuses file locks (Lustre mounted
without `flock`: ENOSYS; NFS without its lock daemon: ENOLCK; others: EOPNOTSUPP) is named
in one line, with what to do, before anything is written. Cloud storage (s3://, gs://) is
not locked: there, start one command per experiment at a time.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from analysis import storage
from analysis.storage import LOCK_FILE
from trainables.errors import InputError
from tune_jobs.storage_space import mount_of

UNLOCKABLE = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)  # flock's errors where the filesystem has no locks


class ExperimentLock:
    """The held lock: `previous` is what an earlier holder that did not release recorded."""

    def __init__(self, fd: int | None, command: str, previous: dict) -> None:
        self._fd = fd
        self.previous = previous
        self.info = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                     "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        self._write()

    def record(self, **fields: str) -> None:
        """Add `fields` to the holder's record (a later holder reads them if this one dies)."""
        self.info.update(fields)
        self._write()

    def _write(self) -> None:
        if self._fd is not None:
            data = json.dumps(self.info).encode()
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Clear the record (nothing for a later holder to clean up) and unlock."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


@contextmanager
def hold(experiment: str, command: str, create: bool = False) -> Iterator[ExperimentLock]:
    """Hold `experiment`'s lock for the span of the block.

    `create=True` (run): make the experiment directory first; InputError("--name", ...) if it
    exists beyond what `slurm` prepared for its job (storage.JOB_DIR). Otherwise
    InputError("experiment", ...) naming the holder while another command holds it.
    """
    lock = acquire(experiment, command, create)
    try:
        yield lock
    finally:
        lock.release()


def acquire(experiment: str, command: str, create: bool = False) -> ExperimentLock:
    """The lock of `experiment` (see `hold`); released by `release()` or when this process exits."""
    if storage.is_uri(experiment):
        return ExperimentLock(None, command, {})  # not locked: see the module docstring
    directory = Path(experiment)
    if create:
        try:
            directory.mkdir()
        except FileExistsError:
            if storage.started(experiment):  # not just the JOB_DIR that `slurm` prepared for this run's job
                raise InputError("--name", f"{experiment} already exists; continue it with `instrument-sweep "
                                           f"resume {directory.name}` or choose another --name") from None
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _parse(os.pread(fd, 4096, 0))
        os.close(fd)
        raise InputError("experiment", f"{experiment} is in use by {describe(holder)}; wait for it to end "
                                       "(or stop it), then try again") from None
    except OSError as exc:
        os.close(fd)
        if exc.errno not in UNLOCKABLE:
            raise
        (directory / LOCK_FILE).unlink(missing_ok=True)
        if create and not storage.started(experiment) and not any(directory.iterdir()):
            directory.rmdir()  # made just now: nothing half-written stays
        raise unlockable(directory, exc) from None
    return ExperimentLock(fd, command, _parse(os.pread(fd, 4096, 0)))


def check_lockable(directory: str) -> None:
    """InputError("--storage", ...) where the filesystem of `directory` (an existing local directory)
    refuses the lock `acquire` takes; nothing stays behind."""
    if storage.is_uri(directory):
        return
    probe = Path(directory, f".{LOCK_FILE}.probe-{os.getpid()}")
    fd = os.open(probe, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in UNLOCKABLE:
            raise unlockable(Path(directory), exc) from None
        if not isinstance(exc, BlockingIOError):
            raise
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def unlockable(directory: Path, exc: OSError) -> InputError:
    """The one line for a filesystem that refuses file locks: which one, and what to do."""
    point, kind = mount_of(directory)
    where = f"{kind} filesystem mounted at {point}" if point else "a filesystem"
    return InputError("--storage", f"{directory} is on a {where} that refuses file locks (flock: "
                                   f"{exc.strerror or exc}), which keep two commands from writing one experiment "
                                   "at once: choose a --storage on a filesystem with locks (your home, most often), "
                                   "or ask your admins to enable them there (Lustre: mount with -o flock; NFS: run "
                                   "its lock daemon, rpc.statd)")


def describe(holder: dict) -> str:
    """"`instrument-sweep run` (pid 123 on host, since ...)" from a holder's record."""
    if not holder:
        return "another instrument-sweep command"
    return (f"`instrument-sweep {holder.get('command', '?')}` (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, since {holder.get('since', '?')})")


def _parse(data: bytes) -> dict:
    try:
        record = json.loads(data.decode() or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}
