"""Stop a sweep safely before local storage fills up, or its quota runs out.

Ray Tune writes its experiment state in place: a full disk can truncate it, and
then the sweep cannot be resumed. `StorageGuard` watches the room left while
trials run and, when it gets low, interrupts Tune the way Ctrl-C does (SIGUSR1:
Tune saves its state one last time and returns), so `instrument-sweep resume`
continues once space is freed. It reads the free space every CHECK_EVERY_S; a
quota (EDQUOT), which the free space does not show, it finds by allocating the
room it needs, every PROBE_EVERY_S (`storage_space.short_of_room`). Cloud
storage (s3://, gs://) is not watched.
"""

from __future__ import annotations

import os
import signal
import time

from ray import tune

from tune_jobs.storage_space import MIN_FREE_TO_CONTINUE_MB, free_mb, short_of_room

CHECK_EVERY_S = 1.0
PROBE_EVERY_S = 30.0


class StorageGuard(tune.Callback):
    """Interrupts the sweep (resumably) when less than MIN_FREE_TO_CONTINUE_MB are left to it."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.tripped = False
        self._last_check = self._last_probe = 0.0

    def on_step_end(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if self.tripped or now - self._last_check < CHECK_EVERY_S:
            return
        self._last_check = now
        free = free_mb(self.location)
        if free is None:
            return
        short = f"{free:.0f} MB free on {self.location}" if free < MIN_FREE_TO_CONTINUE_MB else ""
        if not short and now - self._last_probe >= PROBE_EVERY_S:
            self._last_probe = now
            short = short_of_room(self.location, MIN_FREE_TO_CONTINUE_MB)
        if short:
            self.tripped = True
            print(f"storage nearly full ({short}): stopping the sweep safely", flush=True)
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's graceful stop: save state, then return

    def __getstate__(self) -> dict:
        return {"location": self.location}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["location"])
