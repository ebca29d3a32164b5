"""Room on local storage: refuse to start a sweep without it, explain a stop for it.

    short_of_room("/scratch/me/sweeps", 64)    # "" where 64 MB more fit; else why not, in a few words
    no_room(exc)                                # the OSError of a full disk or a used-up quota in exc, or None
    mount_of(Path("/scratch/me"))               # ("/scratch", "lustre"): the filesystem a path is on

Ray Tune writes its experiment state in place: a full disk can truncate it, and
then the sweep cannot be resumed. `check_free_space` refuses to start with too
little room; `tune_jobs.storage_guard.StorageGuard` stops a running sweep
safely below MIN_FREE_TO_CONTINUE_MB. A quota (as on most clusters' scratch
filesystems) is treated like a full disk: it refuses writes (EDQUOT) while the
filesystem shows space free, so room is also checked by allocating it. Cloud
storage (s3://, gs://) is not checked. No Ray here: the checks run before Ray starts.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from trainables.errors import InputError
from analysis import storage

MIN_FREE_TO_START_MB = 64.0  # a sweep's checkpoints and logs need room to grow
MIN_FREE_TO_CONTINUE_MB = 32.0  # below this, stop while the state can still be written
NO_ROOM = {errno.ENOSPC: "the filesystem is full", errno.EDQUOT: "your quota there is used up"}
HOW_TO_MAKE_ROOM = "free some space (or ask for more quota: `quota -s`; on Lustre `lfs quota -h DIR`)"


def free_mb(location: str) -> float | None:
    """Free megabytes where `location` lives; None for cloud storage."""
    if storage.is_uri(location):
        return None
    return shutil.disk_usage(location).free / 1e6


def no_room(exc: BaseException | None) -> OSError | None:
    """The write refused for want of room (a full disk, ENOSPC, or a used-up quota, EDQUOT) that `exc` is
    or was raised from (Tune wraps what its callbacks raise); None where it is none."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in NO_ROOM:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def short_of_room(location: str, need_mb: float) -> str:
    """"" where `need_mb` more megabytes fit at `location` (a local directory); else why not: the free
    space the filesystem reports, or, where that is enough, `need_mb` refused as they are allocated
    (a quota). Cloud storage: ""."""
    free = free_mb(location)
    if free is None:
        return ""
    if free < need_mb:
        return f"only {free:.0f} MB free on {location}"
    fd, probe = tempfile.mkstemp(prefix=".instrument-sweep-room-", dir=location)
    try:
        os.posix_fallocate(fd, 0, int(need_mb * 1e6))
    except OSError as exc:
        if not no_room(exc):
            raise
        return f"no room for {need_mb:.0f} MB on {location}: {NO_ROOM[exc.errno]} ({exc.strerror})"
    finally:
        os.close(fd)
        os.unlink(probe)
    return ""


def check_free_space(location: str) -> None:
    """Before a run: refuse storage with too little room (exit 2, nothing written)."""
    short = short_of_room(location, MIN_FREE_TO_START_MB)
    if short:
        raise InputError("--storage", f"{short}; a sweep needs at least {MIN_FREE_TO_START_MB:.0f} MB "
                                      f"({HOW_TO_MAKE_ROOM}, or choose another --storage)")


def check_stopped_for_space(location: str, resume_command: str) -> None:
    """After an unfinished run: say so if too little room is why (the guard stopped it), and how to continue."""
    short = short_of_room(location, MIN_FREE_TO_CONTINUE_MB)
    if short:
        raise InputError("--storage", f"{short}: the sweep stopped safely with all results so far saved; "
                                      f"{HOW_TO_MAKE_ROOM}, then `{resume_command}`")


def failed_for_space(refused: OSError, resume_command: str) -> InputError:
    """The one line for a sweep that a write refused for want of room (`no_room`) ended: Tune's state,
    written whole or not at all, is the last it saved."""
    return InputError("--storage", f"a write was refused: {NO_ROOM[refused.errno]} ({refused.strerror}: "
                                   f"{refused.filename or '?'}); the sweep stopped, and what it saved before is "
                                   f"kept: {HOW_TO_MAKE_ROOM}, then `{resume_command}`")


def mount_of(path: Path) -> tuple[str, str]:
    """(mount point, filesystem type) of the filesystem `path` is on (the longest mount point above it);
    ("", "") where unknown."""
    best, kind = "", ""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "", ""
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3:
            point = parts[1].replace("\\040", " ")
            if (str(path) == point or str(path).startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, kind = point, parts[2]
    return best, kind
