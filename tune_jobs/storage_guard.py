"""Stop a sweep safely before local storage fills up.

Ray Tune writes its experiment state in place: a full disk can truncate it, and
then the sweep cannot be resumed. `StorageGuard` watches free space while trials
run and, when it gets low, interrupts Tune the way Ctrl-C does (SIGUSR1: Tune
saves its state one last time and returns), so `instrument-sweep resume`
continues once space is freed. Cloud storage (s3://, gs://) is not watched.
"""

from __future__ import annotations

import os
import signal
import time

from ray import tune

from tune_jobs.storage_space import MIN_FREE_TO_CONTINUE_MB, free_mb

CHECK_EVERY_S = 1.0


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
