"""ThresholdPatienceStopper as Tune calls it: per result, sometimes twice, and after restores."""

import pickle

import pytest

from trainables.stopper import ThresholdPatienceStopper


def results(accuracies, with_hits=False, threshold=0.98):
    hits = 0
    for epoch, acc in enumerate(accuracies, start=1):
        hits = hits + 1 if acc >= threshold else 0
        row = {"epoch": epoch, "val_acc": acc, "status": "running"}
        if with_hits:
            row["hits_in_a_row"] = hits
        yield row


def first_stop(stopper, rows, trial_id="t1", call_last_twice=False):
    rows = list(rows)
    for row in rows:
        if stopper(trial_id, row):
            if call_last_twice:  # Tune calls again with the final result when the function returns
                assert stopper(trial_id, row)
            return row["epoch"]
    return None


@pytest.mark.parametrize("with_hits", [False, True])
@pytest.mark.parametrize(
    "accuracies, patience, max_epochs, expected",
    [
        ([0.99, 0.99, 0.99, 0.99], 3, 100, 3),
        ([0.5, 0.99, 0.99, 0.97, 0.99, 0.99, 0.99], 3, 100, 7),
        ([0.5] * 6, 3, 4, 4),
        ([0.97, 0.99], 1, 100, 2),
        ([0.5, 0.5], 3, 100, None),
    ],
)
def test_stops_where_the_rule_says(accuracies, patience, max_epochs, expected, with_hits):
    stopper = ThresholdPatienceStopper("val_acc", 0.98, patience, max_epochs)
    assert first_stop(stopper, results(accuracies, with_hits), call_last_twice=True) == expected


def test_repeated_result_is_not_counted_twice():
    stopper = ThresholdPatienceStopper("val_acc", 0.98, patience=3, max_epochs=100)
    rows = list(results([0.99, 0.99]))
    assert not stopper("t", rows[0])
    assert not stopper("t", rows[1])
    assert not stopper("t", rows[1])  # the same epoch again: still 2 hits, not 3
    assert stopper("t", {"epoch": 3, "val_acc": 0.99})


def test_trials_are_counted_separately():
    stopper = ThresholdPatienceStopper("val_acc", 0.98, patience=2, max_epochs=100)
    assert not stopper("a", {"epoch": 1, "val_acc": 0.99})
    assert not stopper("b", {"epoch": 1, "val_acc": 0.5})
    assert stopper("a", {"epoch": 2, "val_acc": 0.99})
    assert not stopper("b", {"epoch": 2, "val_acc": 0.99})


def test_after_restore_the_count_comes_from_the_result():
    """A restored experiment gets a fresh (unpickled) stopper; hits_in_a_row travels in the result."""
    stopper = ThresholdPatienceStopper("val_acc", 0.98, patience=3, max_epochs=100)
    rows = list(results([0.99] * 5, with_hits=True))
    assert not stopper("t", rows[0])
    restored = ThresholdPatienceStopper("val_acc", 0.98, patience=3, max_epochs=100)
    assert not restored("t", rows[1])
    assert restored("t", rows[2])
    assert pickle.loads(pickle.dumps(stopper))("t", rows[2])


def test_divergence_stops_at_once():
    stopper = ThresholdPatienceStopper("val_acc", 0.98, patience=3, max_epochs=100)
    assert stopper("t", {"epoch": 1, "val_acc": float("nan"), "status": "diverged"})
    assert stopper("u", {"epoch": 1, "val_acc": float("nan")})


def test_fixed_epochs_stop_only_at_max_epochs():
    stopper = ThresholdPatienceStopper("val_acc", None, patience=1, max_epochs=3)
    assert [stopper("t", {"epoch": e, "val_acc": 1.0}) for e in (1, 2, 3)] == [False, False, True]
