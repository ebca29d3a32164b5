"""Shared fixtures: small real datasets and one local Ray for in-process tests."""

from __future__ import annotations

import os

import numpy as np
import pytest

from trainables.prepare import Splits, prepare_splits


def blobs(n_rows: int, n_features: int = 12, n_classes: int = 4, seed: int = 0, spread: float = 1.0):
    """Gaussian class blobs: a small, learnable, deterministic dataset (x float32, y int64)."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(1234).normal(size=(n_classes, n_features)) * 1.5
    y = rng.integers(0, n_classes, n_rows)
    x = centers[y] + rng.normal(size=(n_rows, n_features)) * spread
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="session")
def small_splits() -> Splits:
    train_x, train_y = blobs(2000, seed=0)
    test_x, test_y = blobs(500, seed=1)
    return prepare_splits(train_x, train_y, test_x, test_y, val_fraction=0.2, seed=0)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs, no dashboard) shared by the in-process Ray tests."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
