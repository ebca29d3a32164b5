"""Shared fixtures: small real datasets and one local Ray for in-process tests.

Every test session uses a temporary dataset cache (never the user's ~/.cache), and
every test that starts Ray (through the `ray_local` fixture) is in the slow tier.

The suite must pass on a loaded machine: `--busy-core` (or INSTRUMENT_SWEEP_TEST_BUSY_CORE=1)
keeps one core busy with a plain busy loop from the session's start to its end.

    python -m pytest -m "slow or cluster" --busy-core
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from trainables.data.splits import Splits, prepare_splits
from trainables.data.synthetic import CACHE_ENV

_CACHE = tempfile.TemporaryDirectory(prefix="instrument-sweep-test-cache-")
os.environ[CACHE_ENV] = _CACHE.name  # before any test (or CLI subprocess) resolves "synthetic"


BUSY_CORE_ENV = "INSTRUMENT_SWEEP_TEST_BUSY_CORE"
# A plain busy loop, which ends by itself should the test run be killed (its parent gone).
BUSY_LOOP = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass\n"
_busy_loop = pytest.StashKey[subprocess.Popen]()


def pytest_addoption(parser):
    parser.addoption("--busy-core", action="store_true", default=os.environ.get(BUSY_CORE_ENV, "") not in ("", "0"),
                     help=f"keep one core busy with a busy loop for the whole run, as the suite must pass "
                          f"under load (also: {BUSY_CORE_ENV}=1)")


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_sessionstart(session):
    # A run ended with SIGTERM (a CI timeout, `kill`) tears down as on Ctrl-C: each test's `finally` and its
    # fixtures stop the Ray nodes, daemons and sweeps it started, rather than leaving them running.
    signal.signal(signal.SIGTERM, _interrupt)
    if session.config.getoption("busy_core"):
        session.config.stash[_busy_loop] = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])


def pytest_report_header(config):
    busy = config.stash.get(_busy_loop, None)
    return f"busy core: a busy loop (pid {busy.pid}) keeps one core busy until the run ends" if busy else None


def pytest_sessionfinish(session):
    busy = session.config.stash.get(_busy_loop, None)
    if busy is not None:
        busy.kill()
        busy.wait()


def pytest_collection_modifyitems(items):
    """Tests that start Ray belong in the slow tier."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


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


def blob_dataset(n_train: int = 1200, n_test: int = 300, n_features: int = 16, n_classes: int = 4):
    """A real `Dataset` of Gaussian blobs, for sweeps that must run in seconds."""
    from trainables.data.dataset import Dataset

    train_x, train_y = blobs(n_train, n_features, n_classes, seed=0)
    test_x, test_y = blobs(n_test, n_features, n_classes, seed=1)
    classes = tuple(f"class{i}" for i in range(n_classes))
    return Dataset(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, classes=classes,
                   metadata={"source": "tests: gaussian blobs"}, path="<blobs>")


TINY_SWEEP = {
    "name": "tiny",
    "description": "a real sweep over blobs: two views, one trial that misses the target",
    "train": {"n_hidden": 32},
    "stop": {"threshold": 0.9, "patience": 2, "max_epochs": 5},
    "views": {
        "lr": {"lr": [0.05, 0.005, 1.0e-5], "batch_size": 64},
        "batch_size": {"batch_size": [32, 256], "lr": 0.005},
    },
    "resources": {"checkpoint_every_s": 0},  # a checkpoint after every epoch (test_sweep counts them)
}
TINY_FIXED_SWEEP = {
    "name": "tiny-fixed",
    "train": {"n_hidden": 32},
    "stop": {"threshold": None, "max_epochs": 4},
    "views": {"lr": {"lr": [0.01, 0.001], "batch_size": 64}},
    # Only after the last epoch, on any machine: trials take a second or two. One report for all 4 epochs.
    "resources": {"checkpoint_every_s": 3600, "report_every_s": 3600},
}


def run_tiny_sweep(raw_spec: dict, storage_root, name: str):
    """Run a real sweep on the in-process Ray; return its experiment directory."""
    from tune_jobs.cluster import describe
    from tune_jobs.launch import start_sweep
    from tune_jobs.spec import spec_from_dict

    spec = spec_from_dict(raw_spec)
    start_sweep(spec, blob_dataset(), str(storage_root), name, describe(), progress=False)
    return str(storage_root / name)


@pytest.fixture(scope="session")
def tiny_experiment(ray_local, tmp_path_factory) -> str:
    """A finished threshold sweep: 5 trials, 2 views, one that ends at max_epochs."""
    return run_tiny_sweep(TINY_SWEEP, tmp_path_factory.mktemp("sweeps"), "tiny")


@pytest.fixture(scope="session")
def tiny_fixed_experiment(ray_local, tmp_path_factory) -> str:
    """A finished fixed-epochs sweep (test metrics every epoch)."""
    return run_tiny_sweep(TINY_FIXED_SWEEP, tmp_path_factory.mktemp("sweeps"), "tiny-fixed")


def write_dataset_dir(directory, dataset) -> str:
    """Write `dataset` in the dataset directory format (no prefix)."""
    directory.mkdir(parents=True, exist_ok=True)
    for part, array in (("train_data", dataset.train_x), ("train_labels", dataset.train_y),
                        ("test_data", dataset.test_x), ("test_labels", dataset.test_y)):
        np.save(directory / f"{part}.npy", array)
    return str(directory)


@pytest.fixture(scope="session")
def blob_dataset_dir(tmp_path_factory) -> str:
    """The blobs dataset on disk, for CLI runs that must take seconds."""
    return write_dataset_dir(tmp_path_factory.mktemp("blobs"), blob_dataset())


@pytest.fixture
def process_tag():
    """A tag for the processes a test starts; all of them are killed afterwards."""
    from processes import kill_tagged, new_tag

    tag = new_tag()
    yield tag
    kill_tagged(tag)
