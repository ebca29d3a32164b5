"""Pure data preparation for one trial: validation split and standardization."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
        n_val = int(round(len(rows) * val_fraction))
        if len(rows) > 1:
            n_val = min(max(n_val, 1), len(rows) - 1)
        val_rows.append(rows[:n_val])
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
