"""Audio -> note features on files written here in UIowa layout (one folder per instrument)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from trainables.data.dataset import load_dataset
from trainables.errors import InputError
from trainables.data.audio_dataset import audio_to_dataset, find_audio, read_audio, split_by_file
from trainables.data.note_features import FeatureRecipe, NoteFeaturizer, note_spans
from tune_jobs.cli import main

SR = 44100
NOTES_PER_FILE = 4


def tone_notes(kind: str, first_midi: int, n_notes: int = NOTES_PER_FILE, note_s: float = 0.5,
               gap_s: float = 0.4, level: float = 0.3) -> np.ndarray:
    """Chromatic notes separated by silence, like a UIowa file: sine, square-ish or saw-ish tones."""
    t = np.arange(int(note_s * SR)) / SR
    envelope = np.minimum(1, t / 0.02) * np.minimum(1, (note_s - t) / 0.05)
    partials = {"Sine": [(1, 1.0)], "Square": [(k, 1 / k) for k in range(1, 30, 2)],
                "Saw": [(k, 1 / k) for k in range(1, 30)]}[kind]
    pieces = [np.zeros(int(gap_s * SR))]
    for midi in range(first_midi, first_midi + n_notes):
        f0 = 440 * 2 ** ((midi - 69) / 12)
        y = sum(a * np.sin(2 * np.pi * k * f0 * t) for k, a in partials if k * f0 < 10000)
        pieces += [level * envelope * y / np.abs(y).max(), np.zeros(int(gap_s * SR))]
    return np.concatenate(pieces)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    """3 instruments x 3 multi-note files (mono/stereo, 16/24 bit, WAV/AIFF/FLAC) plus bad files."""
    root = tmp_path_factory.mktemp("uiowa")
    formats = [(".wav", "PCM_16"), (".aiff", "PCM_24"), (".flac", "PCM_16")]
    for kind in ("Saw", "Sine", "Square"):
        (root / kind).mkdir()
        for i, (suffix, subtype) in enumerate(formats):
            y = tone_notes(kind, 55 + 5 * i)
            if kind == "Square" and suffix == ".aiff":
                y = np.stack([y, 0.8 * y], axis=1)  # stereo 24-bit
            sf.write(root / kind / f"{kind}.mf.{i}{suffix}", y, SR, subtype=subtype)
    (root / "Saw" / "broken.aiff").write_bytes(b"FORM\x00\x00\x00\x10AIFF not really audio")
    sf.write(root / "Saw" / "silent.wav", np.zeros(SR), SR)
    sf.write(root / "Sine" / "empty.wav", np.zeros(0), SR)
    (root / "Sine" / "._Sine.mf.0.wav").write_bytes(b"AppleDouble")  # hidden: ignored
    (root / "Sine" / "README.txt").write_text("not audio")  # ignored
    (root / "Ghost").mkdir()
    (root / "Ghost" / "noise.wav").write_bytes(b"RIFF....WAVEjunk")  # its only file is corrupt
    return root


@pytest.fixture(scope="module")
def extracted(audio_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("features") / "ds"
    audio_to_dataset(audio_dir, out, workers=1, progress=False)
    return out


def test_writes_one_row_per_note_and_lists_skipped_files(extracted):
    ds = load_dataset(extracted)
    assert ds.classes == ("Saw", "Sine", "Square") and ds.n_features == 120
    assert ds.n_train + ds.n_test == 9 * NOTES_PER_FILE
    meta = ds.metadata
    assert dict(meta["skipped"]).keys() == {"Ghost/noise.wav", "Saw/broken.aiff", "Saw/silent.wav", "Sine/empty.wav"}
    reasons = dict(meta["skipped"])
    assert reasons["Saw/broken.aiff"].startswith("unreadable")
    assert reasons["Saw/silent.wav"].startswith("silent")
    assert reasons["Sine/empty.wav"].startswith("empty")
    assert meta["dropped_classes"] == ["Ghost"]
    assert meta["features"]["recipe"]["n_mfcc"] == 40 and len(meta["features"]["names"]) == 120
    assert meta["counts"]["files"] == 13 and meta["counts"]["usable_files"] == 9
    assert all(n == NOTES_PER_FILE for _, n in meta["files"]["train"] + meta["files"]["test"])


def test_split_is_by_file_and_stratified(extracted):
    ds = load_dataset(extracted)
    train, test = dict(ds.metadata["files"]["train"]), dict(ds.metadata["files"]["test"])
    assert not set(train) & set(test)
    assert sum(train.values()) == ds.n_train and sum(test.values()) == ds.n_test
    assert sorted(name.split("/")[0] for name in test) == ["Saw", "Sine", "Square"]  # 1 of 3 files per class
    # Rows follow the listed files, so each test file's notes are all on the test side.
    assert np.array_equal(np.bincount(ds.test_y), [NOTES_PER_FILE] * 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_by_file_counts_per_class(seed):
    labels = np.repeat(np.arange(4), [1, 2, 10, 31])
    is_test = split_by_file(labels, 0.2, seed)
    assert [int(is_test[labels == c].sum()) for c in range(4)] == [0, 1, 2, 6]
    assert np.array_equal(is_test, split_by_file(labels, 0.2, seed))
    with pytest.raises(InputError, match="--test-fraction"):
        split_by_file(labels, 1.0, seed)


def test_seeds_choose_different_files():
    labels = np.repeat(np.arange(3), 20)
    assert not np.array_equal(split_by_file(labels, 0.3, 0), split_by_file(labels, 0.3, 1))


def test_deterministic_across_worker_counts(audio_dir, extracted, tmp_path):
    audio_to_dataset(audio_dir, tmp_path / "pool", workers=2, progress=False)
    for name in ("train_data.npy", "train_labels.npy", "test_data.npy", "test_labels.npy", "metadata.json"):
        assert (tmp_path / "pool" / name).read_bytes() == (extracted / name).read_bytes(), name


def test_ray_tasks_give_the_same_dataset(audio_dir, extracted, tmp_path, ray_local):
    audio_to_dataset(audio_dir, tmp_path / "ray", ray_address="auto", progress=False)
    for name in ("train_data.npy", "test_data.npy", "test_labels.npy", "metadata.json"):
        assert (tmp_path / "ray" / name).read_bytes() == (extracted / name).read_bytes(), name


def test_stereo_24_bit_matches_mono_16_bit(tmp_path):
    y = tone_notes("Saw", 60)
    sf.write(tmp_path / "mono.wav", y, SR, subtype="PCM_16")
    sf.write(tmp_path / "stereo.aiff", np.stack([y, y], axis=1), SR, subtype="PCM_24")
    featurize = NoteFeaturizer(FeatureRecipe())
    mono, stereo = (featurize(read_audio(tmp_path / name, 22050)) for name in ("mono.wav", "stereo.aiff"))
    assert mono.shape == stereo.shape == (NOTES_PER_FILE, 120)
    np.testing.assert_allclose(mono, stereo, rtol=0.02, atol=0.05)


def test_note_spans_bridge_short_gaps_and_drop_clicks():
    recipe = FeatureRecipe()  # 23.2 ms frames: min note and min silence 0.1 s = 5 frames
    loud, quiet = 1.0, 1e-3
    rms = np.array([quiet] * 3 + [loud] * 10 + [quiet] * 2 + [loud] * 8 + [quiet] * 9 + [loud] * 2
                   + [quiet] * 9 + [loud] * 6 + [quiet] * 3)
    assert note_spans(rms, recipe) == [(3, 23), (43, 49)]  # gap of 2 bridged, 2-frame click dropped


def test_recipe_is_validated():
    with pytest.raises(InputError, match="n_mfcc"):
        FeatureRecipe(n_mfcc=200)
    with pytest.raises(InputError, match="fmax_hz"):
        FeatureRecipe(fmax_hz=20000.0)
    assert FeatureRecipe().n_features == 120


def test_no_usable_audio_is_an_input_error(audio_dir, tmp_path, capsys):
    (tmp_path / "audio" / "Ghost").mkdir(parents=True)
    (tmp_path / "audio" / "Ghost" / "a.wav").write_bytes(b"junk")
    assert main(["features", str(tmp_path / "audio"), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "no file gave any note (Ghost/a.wav: unreadable" in capsys.readouterr().err
    with pytest.raises(InputError, match="2 or more usable files"):  # one file per class: no test side
        (tmp_path / "one" / "Sine").mkdir(parents=True)
        sf.write(tmp_path / "one" / "Sine" / "a.wav", tone_notes("Sine", 60), SR)
        audio_to_dataset(tmp_path / "one", tmp_path / "out1", workers=1, progress=False)


def test_find_audio_needs_instrument_folders(tmp_path):
    with pytest.raises(InputError, match="no instrument folders"):
        find_audio(tmp_path)
    with pytest.raises(InputError, match="is not a directory"):
        find_audio(tmp_path / "missing")


def test_cli_features_and_its_errors(audio_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["features", str(audio_dir), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}: ") and "from 9 of 13 files" in printed
    assert "skipped 4 files:" in printed and "Saw/broken.aiff: unreadable" in printed
    assert printed.strip().endswith("dropped classes without a usable file: Ghost")
    assert load_dataset(out).n_classes == 3
    assert main(["features", str(audio_dir), "--out", str(out), "--quiet"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["features", str(audio_dir), "--out", str(tmp_path / "x"), "--test-fraction", "1.5"]) == 2
    assert "--test-fraction" in capsys.readouterr().err
    assert main(["features", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_show_audio_writes_the_seed_spectrogram(audio_dir, tmp_path, capsys):
    png = tmp_path / "plots" / "sine.png"
    assert main(["show-audio", str(audio_dir / "Sine" / "Sine.mf.1.aiff"), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["show-audio", str(audio_dir / "Saw" / "broken.aiff"), "--out", str(tmp_path / "b.png")]) == 2
    assert "cannot read audio" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_leaves_no_dataset(tmp_path):
    """SIGINT during extraction (after the first files): exit 130, no output, no temp directory."""
    root = tmp_path / "audio"
    for kind in ("Saw", "Square"):
        (root / kind).mkdir(parents=True)
        sf.write(root / kind / "0.wav", tone_notes(kind, 50, note_s=1.0), SR)
        data = (root / kind / "0.wav").read_bytes()
        for i in range(1, 150):
            (root / kind / f"{i}.wav").write_bytes(data)
    out = tmp_path / "out" / "ds"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tune_jobs.cli", "features", str(root), "--out", str(out), "--workers", "2"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen = ""
    while not re.search(r"\b[1-9]\d*/300\b", seen):  # the first chunks are done: extraction is under way
        char = proc.stderr.read(1)
        assert char, f"exited before any progress: {seen}"
        seen += char
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
