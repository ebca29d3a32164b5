"""Stop a sweep safely before local storage fills up.

Ray Tune writes its experiment state in place: a full disk can truncate it, and
then the sweep cannot be resumed. `check_free_space` refuses to start with too
little room; `StorageGuard` watches free space while trials run and, when it
gets low, interrupts Tune the way Ctrl-C does (SIGUSR1: Tune saves its state one
last time and returns), so `instrument-sweep resume` continues once space is freed.
Cloud storage (s3://, gs://) is not watched.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

from ray import tune

from trainables.errors import InputError
from tune_jobs import storage

MIN_FREE_TO_START_MB = 64.0  # a sweep's checkpoints and logs need room to grow
MIN_FREE_TO_CONTINUE_MB = 32.0  # below this, stop while the state can still be written
CHECK_EVERY_S = 1.0


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


def check_stopped_for_space(location: str, experiment: str) -> None:
    """After an unfinished run: say so if low space is why (the guard stopped it)."""
    free = free_mb(location)
    if free is not None and free < MIN_FREE_TO_CONTINUE_MB:
        raise InputError("--storage", f"only {free:.0f} MB free on {location}: the sweep stopped safely with all "
                                      "results so far saved; free some space, then "
                                      f"`instrument-sweep resume {experiment}`")


class StorageGuard(tune.Callback):
    """Interrupts the sweep (resumably) when free space drops below MIN_FREE_TO_CONTINUE_MB."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.tripped = False
        self._last_check = 0.0

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.tripped or time.monotonic() - self._last_check < CHECK_EVERY_S:
            return
        self._last_check = time.monotonic()
        free = free_mb(self.location)
        if free is not None and free < MIN_FREE_TO_CONTINUE_MB:
            self.tripped = True
            print(f"storage nearly full ({free:.0f} MB free on {self.location}): stopping the sweep safely",
                  flush=True)
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's graceful stop: save state, then return

    def __getstate__(self) -> dict:
        return {"location": self.location}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["location"])
