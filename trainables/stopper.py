"""`ThresholdPatienceStopper`: the seed's stop rule as a Ray Tune Stopper.

    tune.RunConfig(stop=ThresholdPatienceStopper("val_acc", 0.98, patience=3, max_epochs=100))

Stops a trial once `metric` has been >= `threshold` for `patience` consecutive
reported epochs, at `max_epochs`, or at once when it diverged. Safe against
Tune's habits: a result seen twice (Tune calls the stopper again with the last
result when a function trainable returns by itself) is not counted twice, and
after a restored experiment the count comes from the result's `hits_in_a_row`.
"""

from __future__ import annotations

import math

from ray import tune

from trainables import stop_rule
from trainables.config import StopRule


class ThresholdPatienceStopper(tune.Stopper):
    def __init__(self, metric: str = "val_acc", threshold: float | None = 0.98, patience: int = 3,
                 max_epochs: int = 100) -> None:
        self.rule = StopRule(threshold=threshold, patience=patience, max_epochs=max_epochs, metric=metric)
        self._seen: dict[str, tuple[int, int]] = {}  # trial_id -> (last epoch, hits in a row)

    def __call__(self, trial_id: str, result: dict) -> bool:
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        value = result.get(self.rule.metric, float("nan"))
        last_epoch, hits = self._seen.get(trial_id, (0, 0))
        if "hits_in_a_row" in result:
            hits = int(result["hits_in_a_row"])  # the trainable's own count survives restores
        elif epoch != last_epoch:  # a repeated result must not count twice
            hits = stop_rule.next_hits(hits, value, self.rule.threshold)
        self._seen[trial_id] = (epoch, hits)
        diverged = result.get("status") == stop_rule.DIVERGED or not _finite(value)
        return stop_rule.stop_status(epoch, hits, self.rule, diverged=diverged) != stop_rule.RUNNING

    def stop_all(self) -> bool:
        return False


def _finite(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
