"""Pure data preparation for one trial: validation split and standardization.

    instrument-sweep run --set train.val_fraction=0.2   # checked by check_validation_split before Ray starts
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainables.errors import InputError

MIN_STD = 1e-8  # features with a smaller training std are centred, not scaled


@dataclass(frozen=True)
class Splits:
    """Standardized float32 features and int64 labels for train, validation and test."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.train_x.shape[1])


def validation_rows(n_rows: int, val_fraction: float) -> int:
    """How many of a class's `n_rows` training rows `split_validation` holds out: about
    `val_fraction`, at least 1 and at most all but 1 (a class of 1 row keeps it for training)."""
    n_val = int(round(n_rows * val_fraction))
    return min(max(n_val, 1), n_rows - 1) if n_rows > 1 else n_val


def min_validation_rows(threshold: float | None) -> int:
    """Validation rows needed to tell an accuracy `threshold` from 1.0: one row must weigh at most
    1 - threshold (50 rows at 0.98). 1 where there is no accuracy target (or it is 1.0)."""
    if threshold is None or threshold >= 1.0:
        return 1
    return math.ceil(round(1.0 / (1.0 - threshold), 9))


def check_validation_split(class_counts: Sequence[int], val_fraction: float, threshold: float | None) -> None:
    """InputError("train.val_fraction", ...) unless the split leaves every class validation rows
    and, for an accuracy `threshold`, at least `min_validation_rows(threshold)` in all.

    `class_counts`: training rows per label. Numbers in the message are the split's own.
    """
    per_class = [validation_rows(int(n), val_fraction) for n in class_counts]
    empty = [label for label, n in enumerate(per_class) if n < 1 and class_counts[label] > 0]
    if empty:
        names = ", ".join(f"{label} ({class_counts[label]} training row(s))" for label in empty[:8])
        raise InputError("train.val_fraction", f"{val_fraction:g} leaves no validation rows for class(es) {names}; "
                                               "every class needs at least 2 training rows")
    n_val, needed = sum(per_class), min_validation_rows(threshold)
    if n_val < needed:
        n_train = int(sum(class_counts))
        raise InputError("train.val_fraction",
                         f"{val_fraction:g} leaves {n_val} validation rows of {n_train}; the target {threshold:g} "
                         f"needs at least {needed} (1 / (1 - {threshold:g}); with fewer, one row weighs more than the "
                         f"margin {1 - threshold:.3g}); use about {needed / n_train:.2g} or more")


def split_validation(
    x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded hold-out: about `val_fraction` of each class goes to validation.

    Rows are shuffled within each side, so class-ordered input (the UIowa
    training rows) never reaches the loops in order.
    """
    rng = np.random.default_rng(seed)
    val_rows = []
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        rng.shuffle(rows)
        val_rows.append(rows[: validation_rows(len(rows), val_fraction)])
    val_idx = rng.permutation(np.concatenate(val_rows))
    mask = np.ones(len(y), dtype=bool)
    mask[val_idx] = False
    train_idx = rng.permutation(np.flatnonzero(mask))
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def standardize(train_x: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Scale every array with the per-feature mean and std of `train_x` only.

    Zero-variance features (std < MIN_STD) are centred and left unscaled.
    """
    mean = train_x.mean(axis=0, dtype=np.float64)
    std = train_x.std(axis=0, dtype=np.float64)
    std = np.where(std < MIN_STD, 1.0, std)
    return tuple(((a - mean) / std).astype(np.float32) for a in (train_x, *others))


def prepare_splits(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    val_fraction: float,
    seed: int,
) -> Splits:
    """Split validation from the training rows, then standardize all three with train stats."""
    tr_x, tr_y, va_x, va_y = split_validation(train_x, train_y, val_fraction, seed)
    tr_x, va_x, te_x = standardize(tr_x, va_x, test_x)
    n_classes = int(max(train_y.max(), test_y.max() if len(test_y) else 0)) + 1
    as_labels = lambda a: np.ascontiguousarray(a, dtype=np.int64)  # noqa: E731
    return Splits(tr_x, as_labels(tr_y), va_x, as_labels(va_y), te_x, as_labels(test_y), n_classes)
