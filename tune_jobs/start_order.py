"""The order a sweep's trials start in: the longest expected first, so the last to start is short.

    order = start_order(spec, n_train_rows)    # trial numbers, longest expected first
    tune_jobs.launch.LongestFirst(order)       # the Tune scheduler that starts them in this order

Trials run side by side on the cluster's slots; started in the spec's order, a long trial that
starts last runs alone at the end while the other slots idle. Started longest first (the
longest-processing-time rule), the last trials to start are short ones that fill the gaps.
Only the start order changes: each trial's number, Tune id, directory and results are the same.

A trial's expected length (`expected_cost`) is its expected epochs times an epoch's cost, both
from the spec alone (before anything runs):
- an epoch's cost: its rows plus STEP_COST_ROWS per optimizer step (a step's own overhead, as
  rows: on 2 CPU cores an epoch of 7,680 rows took 0.026 s at batch 32 and 0.0086 s at 2048);
- its epochs: every one of max_epochs in fixed-epochs mode; else the epochs it takes to make
  TARGET_STEPS optimizer steps at the optimizer's REFERENCE_LR, scaled by REFERENCE_LR / lr
  (a smaller learning rate takes more steps), at least `patience` and at most `max_epochs`;
  a learning rate above UNSTABLE x REFERENCE_LR is expected to miss the target and run all
  max_epochs. The figures are the `seed` preset's, on the built-in data, at batch 128 (60 steps
  an epoch): Adam at lr 1e-3 reached 0.98 after 11 epochs, at 1e-2 and 3e-2 after 4, at 1e-4
  after 79, and at 1e-5, 0.1 and 1 not within 100; SGD at lr 0.1 after 27, at 1 and 10 after 6,
  and at 0.01 and 100 not within 100.
STEP_COST_ROWS is a CPU's: on a GPU a step's own overhead (kernel launches, the optimizer) weighs
more against its rows, so small batches are expected shorter than they run there.
A wrong guess costs only time (a long trial started late), never a result. Ties keep the
spec's order; a retried trial starts before any other (tune_jobs.ray_private.retried_trials_first).
"""

from __future__ import annotations

import math

from tune_jobs.spec import SweepSpec, TrialSpec

STEP_COST_ROWS = 64
TARGET_STEPS = 660
REFERENCE_LR = {"adam": 1e-3, "sgd": 0.25}
UNSTABLE = 50.0


def expected_cost(spec: SweepSpec, trial: TrialSpec, n_train_rows: int) -> float:
    """How long `trial` is expected to train, in rows' worth of work (see the module docstring)."""
    rows = max(1, n_train_rows - int(round(n_train_rows * spec.train.val_fraction)))  # the training split
    steps_per_epoch = math.ceil(rows / trial.batch_size)
    epoch_cost = rows + STEP_COST_ROWS * steps_per_epoch
    stop = spec.stop
    reference = REFERENCE_LR[spec.train.optimizer]
    if stop.fixed_epochs or trial.lr > UNSTABLE * reference:
        return stop.max_epochs * epoch_cost
    epochs = math.ceil(TARGET_STEPS * reference / trial.lr / steps_per_epoch)
    return min(stop.max_epochs, max(stop.patience, epochs)) * epoch_cost


def start_order(spec: SweepSpec, n_train_rows: int) -> list[int]:
    """The numbers of `spec`'s trials, longest expected first (ties in the spec's order)."""
    trials = spec.trials()
    return [t.number for t in sorted(trials, key=lambda t: -expected_cost(spec, t, n_train_rows))]
