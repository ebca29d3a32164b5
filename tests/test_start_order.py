"""The order a sweep's trials start in (tune_jobs.start_order): the longest expected first.

Tune starting them in that order, on one slot and on two, is in test_private_apis.py
(`trials_staged_in_order`); their numbers, ids and directories staying the spec's, in test_sweep.py.
"""

from tune_jobs.spec import load_spec
from tune_jobs.start_order import expected_cost, start_order

SEED_TRAIN_ROWS = 9_600  # the built-in dataset's


def test_the_seed_sweep_starts_its_long_trials_first_and_its_quick_ones_last():
    """The `seed` preset, as measured on the built-in data (start_order's docstring): lr 1e-5 and 1e-4
    (slow to converge), 0.1 and 1 (never converge) and batch 2048 run 79-100 epochs; batch 512 28;
    lr 1e-3 at batch 128 11, at batch 32 6; lr 1e-2 4. Documented in docs/concepts.md."""
    assert start_order(load_spec("seed"), SEED_TRAIN_ROWS) == [1, 2, 5, 6, 9, 8, 3, 7, 4]


def test_a_smaller_learning_rate_takes_longer_up_to_max_epochs_and_a_too_large_one_runs_them_all():
    spec = load_spec("seed", ["views.lr.lr=[1e-6, 1e-5, 2e-4, 1e-3, 1e-2, 0.05, 0.06, 10]", "views.lr.batch_size=128",
                              "views.batch_size.batch_size=[128]"])
    costs = {t.lr: expected_cost(spec, t, SEED_TRAIN_ROWS) for t in spec.trials()}
    most = costs[1e-6]
    assert costs[1e-5] == most  # both capped at max_epochs
    assert most > costs[2e-4] > costs[1e-3] > costs[1e-2]
    assert costs[1e-2] == costs[0.05]  # at least `patience` epochs
    assert costs[0.06] == costs[10] == most  # above 50 x Adam's 1e-3: expected to miss the target


def test_in_fixed_epochs_mode_the_trials_with_the_most_steps_start_first_and_ties_keep_the_spec_order():
    spec = load_spec("seed", ["stop.threshold=null"])  # every trial trains max_epochs
    order = start_order(spec, SEED_TRAIN_ROWS)
    assert order == [7, 1, 2, 3, 4, 5, 6, 8, 9]  # batch 32, the six at 128 as listed, 512, 2048


def test_sgd_is_measured_against_its_own_learning_rates():
    adam = load_spec("seed", ["views.lr.lr=[0.1, 1.0]"])
    sgd = load_spec("seed", ["views.lr.lr=[0.1, 1.0]", "train.optimizer=sgd"])
    for spec, longer in ((adam, None), (sgd, 0.1)):
        costs = {t.lr: expected_cost(spec, t, SEED_TRAIN_ROWS) for t in spec.trials() if t.batch_size == 128}
        if longer is None:
            assert costs[0.1] == costs[1.0]  # both expected to miss: Adam's steps are too large
        else:
            assert costs[0.1] > costs[1.0]  # SGD at lr 0.1 reached the target after 27 epochs, at 1 after 6
