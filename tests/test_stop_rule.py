"""The seed's stop rule: validation accuracies in, epochs and outcome out."""

import pytest

from trainables import stop_rule
from trainables.config import StopRule
from trainables.errors import InputError


def run_rule(accuracies, rule, diverged_at=None):
    """Feed per-epoch accuracies to the rule as training would; return (epochs, status)."""
    hits = 0
    for epoch, acc in enumerate(accuracies, start=1):
        hits = stop_rule.next_hits(hits, acc, rule.threshold)
        status = stop_rule.stop_status(epoch, hits, rule, diverged=epoch == diverged_at)
        if status != stop_rule.RUNNING:
            return epoch, status
    return len(accuracies), stop_rule.RUNNING


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
    ],
)
def test_threshold_with_patience(accuracies, patience, max_epochs, expected):
    rule = StopRule(threshold=0.98, patience=patience, max_epochs=max_epochs)
    epochs, status = run_rule(accuracies, rule)
    assert (epochs, status) == expected
    if status == "reached_target":
        assert epochs >= patience
    assert epochs <= max_epochs


def test_divergence_stops_at_once():
    rule = StopRule(threshold=0.98, patience=3, max_epochs=100)
    assert run_rule([0.99, 0.99, 0.99], rule, diverged_at=2) == (2, "diverged")


def test_fixed_epochs_mode_runs_max_epochs():
    rule = StopRule(threshold=None, max_epochs=4)
    assert rule.fixed_epochs
    assert run_rule([1.0] * 10, rule) == (4, "max_epochs")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": "high"}, "threshold"),
        ({"patience": 0}, "patience"),
        ({"patience": 5, "max_epochs": 4}, "patience"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"max_epochs": 2.5}, "max_epochs"),
    ],
)
def test_bad_rule_names_the_field(kwargs, field):
    with pytest.raises(InputError) as err:
        StopRule(**kwargs)
    assert err.value.where == field
