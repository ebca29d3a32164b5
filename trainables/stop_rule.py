"""The seed's stop rule as pure functions, shared by the training core and the Tune stopper."""

from __future__ import annotations

from trainables.config import StopRule

REACHED_TARGET = "reached_target"
MAX_EPOCHS = "max_epochs"
DIVERGED = "diverged"
RUNNING = "running"


def next_hits(hits_in_a_row: int, value: float, threshold: float | None) -> int:
    """Consecutive epochs at or above `threshold`, after one more epoch scoring `value`."""
    if threshold is None:
        return 0
    return hits_in_a_row + 1 if value >= threshold else 0


def stop_status(epoch: int, hits_in_a_row: int, rule: StopRule, diverged: bool = False) -> str:
    """Why training stops after `epoch` (1-based), or RUNNING to go on.

    Divergence wins; then the target held for `patience` epochs; then max_epochs.
    """
    if diverged:
        return DIVERGED
    if rule.threshold is not None and hits_in_a_row >= rule.patience:
        return REACHED_TARGET
    if epoch >= rule.max_epochs:
        return MAX_EPOCHS
    return RUNNING
