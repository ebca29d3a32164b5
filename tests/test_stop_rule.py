"""The stop rule: per-epoch metric values in, epochs and outcome out; the Tune stopper only carries it out."""

import math

import pytest

from trainables.errors import InputError
from trainables.training.stop import Race, Status, StopRule
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
    assert {s.value for s in Status} == {"running", "reached_target", "max_epochs", "diverged", "outpaced", "error"}
    assert {s for s in Status if s.ended_by_rule} == {Status.REACHED_TARGET, Status.MAX_EPOCHS, Status.DIVERGED,
                                                      Status.OUTPACED}


@pytest.mark.parametrize("status, stops", [("running", False), ("reached_target", True), ("max_epochs", True),
                                           ("diverged", True)])
def test_the_tune_stopper_follows_the_reported_status(status, stops):
    stopper = StatusStopper()
    row = {"epoch": 4, "val_acc": 0.99, "hits_in_a_row": 3, "status": status}
    assert stopper("t", row) is stops
    assert stopper("t", row) is stops  # Tune passes the last result again: same answer


def row(status: str, time_s: float, energy_j: float = math.nan, **extra) -> dict:
    return {"status": status, "time_s": time_s, "energy_j": energy_j, **extra}


def test_race_by_time_stops_a_running_trial_only_once_it_is_behind_the_best_finished_one():
    stopper = StatusStopper(Race("time"))
    assert stopper("slow", row("running", 50.0)) is False  # nobody has reached the target yet
    assert stopper("fast", row("reached_target", 4.0)) is True
    assert stopper("faster", row("reached_target", 3.0)) is True
    assert stopper("close", row("running", 2.9)) is False  # could still win
    late = row("running", 3.5)
    assert stopper("slow", late) is True and late["status"] == "outpaced"  # recorded as outpaced
    assert stopper("slow", late) is True  # Tune passes the last result again: same answer
    assert stopper.best == 3.0


def test_race_reached_target_and_other_ends_stay_what_the_trial_reported():
    stopper = StatusStopper(Race("time"))
    stopper("fast", row("reached_target", 1.0))
    for status in ("reached_target", "max_epochs", "diverged"):
        result = row(status, 9.0)
        assert stopper("t", result) is True and result["status"] == status


def test_race_by_energy_stops_only_beyond_the_error_bars():
    race = Race("energy")
    best = race.best([row("reached_target", 1.0, 100.0, energy_err_j=5.0)])
    assert best == 105.0
    assert not race.outpaced(row("running", 9.0, 108.0, energy_err_j=4.0), best)  # 104 .. 112 overlaps
    assert race.outpaced(row("running", 9.0, 111.0, energy_err_j=4.0), best)  # at least 107 > 105
    assert race.outpaced(row("running", 9.0, 106.0), best)  # no error reported: exact
    assert not race.outpaced(row("running", 9.0, math.nan), best)  # not measured: never outpaced
    assert race.best([row("reached_target", 1.0, math.nan)]) == math.inf  # nor a leader


def test_race_without_a_race_the_stopper_never_outpaces():
    stopper = StatusStopper()
    stopper("fast", row("reached_target", 1.0))
    result = row("running", 100.0)
    assert stopper("slow", result) is False and result["status"] == "running"


def test_race_names_its_field_when_unknown():
    with pytest.raises(InputError) as err:
        Race("speed")
    assert err.value.where == "race" and "time, energy" in err.value.problem
