"""`StatusStopper`: Ray Tune carries out the stop the trial decided, and in race mode the race's.

    tune.RunConfig(stop=StatusStopper())                  # the trials' own stop rule
    tune.RunConfig(stop=StatusStopper(Race("time")))      # `race: time`: stop trials that cannot win

The trial applies the stop rule (`trainables.training.stop`) after every epoch
and reports the outcome as `status`; this stopper ends the trial on any status
but "running". In race mode it also holds the best figure of the trials that
reached the target so far and stops a running trial that `Race.outpaced` says
cannot win; it marks that result's status "outpaced" in place (Tune passes the
same result on to its loggers and callbacks, so result.json records it).
"""

from __future__ import annotations

import math

from ray import tune

from trainables.training.stop import Race, Status


class StatusStopper(tune.Stopper):
    def __init__(self, race: Race | None = None) -> None:
        self.race = race
        self.best = math.inf  # race mode: lowest figure (upper bound) of a trial that reached the target

    def __call__(self, trial_id: str, result: dict) -> bool:
        if self.race is not None:
            self.best = self.race.best([result], self.best)
            if self.race.outpaced(result, self.best):
                result["status"] = Status.OUTPACED.value
        return Status(result.get("status", Status.RUNNING.value)) is not Status.RUNNING

    def stop_all(self) -> bool:
        return False
