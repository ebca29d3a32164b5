"""Free space on local storage: refuse to start a sweep without room, explain a stop for space.

Ray Tune writes its experiment state in place: a full disk can truncate it, and
then the sweep cannot be resumed. `check_free_space` refuses to start with too
little room; `tune_jobs.storage_guard.StorageGuard` stops a running sweep
safely below MIN_FREE_TO_CONTINUE_MB. Cloud storage (s3://, gs://) is not checked.
No Ray here: the checks run before Ray starts.
"""

from __future__ import annotations

import shutil

from trainables.errors import InputError
from analysis import storage

MIN_FREE_TO_START_MB = 64.0  # a sweep's checkpoints and logs need room to grow
MIN_FREE_TO_CONTINUE_MB = 32.0  # below this, stop while the state can still be written


def free_mb(location: str) -> float | None:
    """Free megabytes where `location` lives; None for cloud storage."""
    if storage.is_uri(location):
        return None
    return shutil.disk_usage(location).free / 1e6


def check_free_space(location: str) -> None:
    """Before a run: refuse storage with too little room (exit 2, nothing written)."""
    free = free_mb(location)
    if free is not None and free < MIN_FREE_TO_START_MB:
        raise InputError("--storage", f"only {free:.0f} MB free on {location}; a sweep needs at least "
                                      f"{MIN_FREE_TO_START_MB:.0f} MB (free some space or choose another --storage)")


def check_stopped_for_space(location: str, resume: str) -> None:
    """After an unfinished run: say so if low space is why (the guard stopped it); `resume`: the
    command that continues it."""
    free = free_mb(location)
    if free is not None and free < MIN_FREE_TO_CONTINUE_MB:
        raise InputError("--storage", f"only {free:.0f} MB free on {location}: the sweep stopped safely with all "
                                      "results so far saved; free some space, then "
                                      f"`{resume}`")
