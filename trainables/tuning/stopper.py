"""`StatusStopper`: Ray Tune carries out the stop the trial decided.

    tune.RunConfig(stop=StatusStopper())

The trial applies the stop rule (`trainables.training.stop`) after every epoch
and reports the outcome as `status`; this stopper ends the trial on any status
but "running". It decides nothing itself, so a result Tune passes twice, or a
restored experiment, cannot change the outcome.
"""

from __future__ import annotations

from ray import tune

from trainables.training.stop import Status


class StatusStopper(tune.Stopper):
    def __call__(self, trial_id: str, result: dict) -> bool:
        return Status(result.get("status", Status.RUNNING.value)) is not Status.RUNNING

    def stop_all(self) -> bool:
        return False
