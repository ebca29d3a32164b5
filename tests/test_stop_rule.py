"""The stop rule: per-epoch metric values in, epochs and outcome out; the Tune stopper only carries it out."""

import math

import pytest

from trainables.errors import InputError
from trainables.training.stop import Status, StopRule
from trainables.tuning.stopper import StatusStopper


def run_rule(values, rule, diverged_at=None):
    """Feed per-epoch metric values to the rule as training does; return (epochs, status)."""
    hits = 0
    for epoch, value in enumerate(values, start=1):
        hits, status = rule.after_epoch(epoch, hits, value, diverged=epoch == diverged_at)
        if status is not Status.RUNNING:
            return epoch, status
    return len(values), Status.RUNNING


@pytest.mark.parametrize(
    "accuracies, patience, max_epochs, expected",
    [
        ([0.99, 0.99, 0.99], 3, 100, (3, "reached_target")),
        ([0.5, 0.99, 0.99, 0.99, 0.99], 3, 100, (4, "reached_target")),
        ([0.99, 0.99, 0.97, 0.99, 0.99, 0.99], 3, 100, (6, "reached_target")),
        ([0.98, 0.98, 0.98], 3, 100, (3, "reached_target")),  # >= threshold counts
        ([0.979, 0.99, 0.99], 3, 100, (3, "running")),
        ([0.5] * 5, 3, 5, (5, "max_epochs")),
        ([0.99, 0.99, 0.5, 0.99, 0.99], 3, 5, (5, "max_epochs")),
        ([0.99] * 3, 3, 3, (3, "reached_target")),  # target wins over the cap on the same epoch
        ([0.99], 1, 100, (1, "reached_target")),
        ([math.nan, 0.99], 1, 100, (2, "reached_target")),  # NaN never reaches the target
    ],
)
def test_threshold_with_patience(accuracies, patience, max_epochs, expected):
    rule = StopRule(threshold=0.98, patience=patience, max_epochs=max_epochs)
    epochs, status = run_rule(accuracies, rule)
    assert (epochs, status) == expected
    if status is Status.REACHED_TARGET:
        assert epochs >= patience
    assert epochs <= max_epochs


def test_loss_target_counts_values_at_or_below_it():
    rule = StopRule(threshold=0.1, patience=2, max_epochs=10, metric="val_loss")
    assert rule.mode == "min"
    assert run_rule([0.5, 0.09, 0.2, 0.1, 0.05], rule) == (5, Status.REACHED_TARGET)


def test_divergence_stops_at_once():
    rule = StopRule(threshold=0.98, patience=3, max_epochs=100)
    assert run_rule([0.99, 0.99, 0.99], rule, diverged_at=2) == (2, Status.DIVERGED)


def test_fixed_epochs_mode_runs_max_epochs():
    rule = StopRule(threshold=None, max_epochs=4)
    assert rule.fixed_epochs
    assert run_rule([1.0] * 10, rule) == (4, Status.MAX_EPOCHS)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": "high"}, "threshold"),
        ({"threshold": -1.0, "metric": "val_loss"}, "threshold"),
        ({"patience": 0}, "patience"),
        ({"patience": 5, "max_epochs": 4}, "patience"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"max_epochs": 2.5}, "max_epochs"),
        ({"metric": "val_accuracy"}, "metric"),
    ],
)
def test_bad_rule_names_the_field(kwargs, field):
    with pytest.raises(InputError) as err:
        StopRule(**kwargs)
    assert err.value.where == field


def test_statuses_are_their_reported_strings():
    assert {s.value for s in Status} == {"running", "reached_target", "max_epochs", "diverged", "error"}
    assert {s for s in Status if s.ended_by_rule} == {Status.REACHED_TARGET, Status.MAX_EPOCHS, Status.DIVERGED}


@pytest.mark.parametrize("status, stops", [("running", False), ("reached_target", True), ("max_epochs", True),
                                           ("diverged", True)])
def test_the_tune_stopper_follows_the_reported_status(status, stops):
    stopper = StatusStopper()
    row = {"epoch": 4, "val_acc": 0.99, "hits_in_a_row": 3, "status": status}
    assert stopper("t", row) is stops
    assert stopper("t", row) is stops  # Tune passes the last result again: same answer
