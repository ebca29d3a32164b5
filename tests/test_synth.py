"""The built-in synthetic instruments: deterministic, cached once, and learnable like the real data."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from trainables.training.config import TrainConfig
from trainables.training.stop import StopRule
from trainables.data.dataset import class_counts, load_dataset
from trainables.data.sources import resolve_dataset
from trainables.errors import InputError
from trainables.data.note_features import FeatureRecipe, NoteFeaturizer
from trainables.data.splits import prepare_splits
from trainables.data.synthetic import (
    CACHE_ENV,
    SYNTH_VERSION,
    VOICES,
    Recording,
    SynthConfig,
    builtin_dataset_dir,
    cache_root_dir,
    generate_synthetic,
    render_recording,
)
from trainables.training.run import train_to_accuracy
from tune_jobs.cli import main

TINY = SynthConfig(files_per_class=3, notes_per_file=2)  # 60 rows: enough to exercise the pipeline


@pytest.fixture(scope="session")
def builtin():
    """The default built-in dataset from the shared cache (generated on first use, ~30-60 s)."""
    return resolve_dataset("synthetic")


@pytest.mark.slow
def test_builtin_dataset_has_the_promised_shape(builtin):
    config = SynthConfig()
    assert builtin.classes == tuple(v.name for v in VOICES) and builtin.n_classes == 10
    assert builtin.n_features == 120
    assert 5000 <= builtin.n_train <= 10000 and 1000 <= builtin.n_test <= 3000
    assert builtin.n_train + builtin.n_test == 10 * config.files_per_class * config.notes_per_file
    test_files = round(config.files_per_class * config.test_fraction)
    assert class_counts(builtin.test_y, 10).tolist() == [test_files * config.notes_per_file] * 10
    meta = builtin.metadata
    assert meta["source"] == "synthetic" and meta["generator"]["version"] == SYNTH_VERSION
    assert meta["skipped"] == [] and meta["dropped_classes"] == []
    assert f"synthetic-v{SYNTH_VERSION}-" in builtin.path


@pytest.mark.slow
def test_builtin_dataset_trains_past_90_percent_quickly(builtin):
    splits = prepare_splits(builtin.train_x, builtin.train_y, builtin.test_x, builtin.test_y, 0.2, seed=0)
    result = train_to_accuracy(splits, TrainConfig(lr=1e-3, batch_size=128), StopRule(0.9, patience=1, max_epochs=8))
    assert result.reached_target and result.epochs <= 5, [round(h.val_acc, 3) for h in result.history]
    assert result.test_acc > 0.85


def test_recordings_are_deterministic_multi_note_files():
    config = SynthConfig()
    name, y = render_recording(config, VOICES, Recording(label=3, index=7), 22050)
    again_name, again = render_recording(config, VOICES, Recording(label=3, index=7), 22050)
    _, other = render_recording(config, VOICES, Recording(label=3, index=8), 22050)
    assert name == again_name and name.startswith("Bassoon/Bassoon.") and name.endswith(".0007")
    assert np.array_equal(y, again) and y.dtype == np.float32
    assert len(other) != len(y) or not np.array_equal(other, y)
    assert NoteFeaturizer(FeatureRecipe())(y).shape == (config.notes_per_file, 120)


@pytest.mark.parametrize("label", range(len(VOICES)))
def test_every_instrument_gives_all_its_notes(label):
    featurize = NoteFeaturizer(FeatureRecipe())
    for index in range(3):
        _, y = render_recording(SynthConfig(), VOICES, Recording(label, index), 22050)
        assert featurize(y).shape[0] == SynthConfig().notes_per_file


def test_cache_generates_once_per_version_and_parameters(tmp_path, monkeypatch):
    first = builtin_dataset_dir(tmp_path, TINY, workers=1, progress=False)
    stamp = (first / "metadata.json").stat().st_mtime_ns
    assert builtin_dataset_dir(tmp_path, TINY, workers=1, progress=False) == first
    assert (first / "metadata.json").stat().st_mtime_ns == stamp  # not regenerated
    assert first.name.startswith(f"synthetic-v{SYNTH_VERSION}-")
    other = builtin_dataset_dir(tmp_path, replace(TINY, seed=1), workers=1, progress=False)
    assert other != first
    ds = load_dataset(first)
    assert (ds.n_train + ds.n_test, ds.n_classes, ds.n_features) == (60, 10, 120)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_root_dir() == tmp_path / "env"
    assert cache_root_dir(tmp_path / "arg") == tmp_path / "arg"


def test_reading_the_cached_dataset_loads_no_scipy(builtin):
    """Every `run` reads it before Ray starts: SciPy's import (0.2 s) is left to generating it."""
    code = ("import sys; from trainables.data.sources import resolve_dataset; ds = resolve_dataset('synthetic'); "
            "print(ds.n_train, 'scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(builtin.n_train), "False"]


def test_two_generators_at_once_share_one_result(tmp_path):
    paths, errors = [], []

    def generate():
        try:
            paths.append(builtin_dataset_dir(tmp_path, TINY, workers=1, progress=False))
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=generate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(paths)) == 1
    assert load_dataset(paths[0]).n_classes == 10
    assert [p.name for p in tmp_path.iterdir()] == [paths[0].name]  # no temp dirs left


def test_same_inputs_same_bytes(tmp_path):
    generate_synthetic(tmp_path / "a", TINY, workers=1, progress=False)
    generate_synthetic(tmp_path / "b", TINY, workers=1, progress=False)
    for name in ("train_data.npy", "train_labels.npy", "test_data.npy", "test_labels.npy", "metadata.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_cli_data_synth(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--files-per-class", "2", "--workers", "1"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert load_dataset(out).n_train == 10 * 6  # one of two files per class trains
    assert main(["data", "synth", "--out", str(out), "--files-per-class", "2", "--workers", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--files-per-class", "1"]) == 2
    assert main(["data", "synth", "--seed", "3"]) == 2  # --out needed when changing the dataset


def test_config_is_validated():
    with pytest.raises(InputError, match="files_per_class"):
        SynthConfig(files_per_class=1)
    with pytest.raises(InputError, match="note_s"):
        SynthConfig(note_s=(0.5, 0.2))
