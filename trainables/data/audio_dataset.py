"""Audio folders (one per instrument, UIowa MIS layout) -> a dataset directory of note features.

    instrument-sweep features ~/uiowa_mis --out data/uiowa           # all cores
    instrument-sweep features ~/uiowa_mis --out data/uiowa --test-fraction 0.2 --seed 0
    instrument-sweep features ~/uiowa_mis --out data/uiowa --address auto   # on a Ray cluster

Labels come from the folder names (sorted), files from anywhere below each folder
(.aiff .aif .wav .flac). Each file: decoded with soundfile, loaded by librosa as mono
at the recipe's sample rate, split into notes, one feature vector per note
(trainables.data.note_features). Unreadable, corrupt, empty or silent files are skipped and
listed; they never abort the run. The train/test split is by file, stratified per
class and seeded, so the notes of one recording never sit on both sides. The
output directory appears complete or not at all (Ctrl-C leaves nothing behind).
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from trainables.data.dataset import write_dataset
from trainables.errors import InputError
from trainables.data.note_features import (
    DEFAULT_RECIPE,
    FeatureRecipe,
    NoteFeaturizer,
    UnusableAudio,
)
from trainables.data.parallel import map_chunks, map_chunks_ray

AUDIO_SUFFIXES = (".aiff", ".aif", ".wav", ".flac")


@dataclass(frozen=True)
class AudioFile:
    """One recording: `name` is its path relative to the audio directory."""

    name: str
    label: int


@dataclass(frozen=True)
class FileFeatures:
    """The notes of one file (rows of `features`), or why it has none (`skipped`)."""

    name: str
    label: int
    features: np.ndarray  # (n_notes, n_features) float32; 0 rows when skipped
    audio_s: float  # decoded duration, seconds (0 when unreadable)
    skipped: str = ""

    @property
    def n_notes(self) -> int:
        return int(self.features.shape[0])


@dataclass(frozen=True)
class FeaturesSummary:
    """What `audio_to_dataset` wrote."""

    out_dir: str
    classes: tuple[str, ...]
    n_files: int
    n_train: int
    n_test: int
    audio_s: float
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped_classes: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [
            (
                f"wrote {self.out_dir}: {self.n_train} train + {self.n_test} test notes, "
                f"{len(self.classes)} classes, from {self.n_files - len(self.skipped)} of {self.n_files} files "
                f"({self.audio_s / 60:.1f} min of audio)"
            ),
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} files:")
            lines += [f"  {name}: {reason}" for name, reason in self.skipped]
        if self.dropped_classes:
            lines.append(f"dropped classes without a usable file: {', '.join(self.dropped_classes)}")
        return "\n".join(lines)


def find_audio(audio_dir: str | os.PathLike) -> tuple[tuple[str, ...], list[AudioFile]]:
    """Class names (sub-folders holding audio, sorted) and their audio files, sorted."""
    root = Path(audio_dir).expanduser()
    if not root.is_dir():
        raise InputError(str(root), "is not a directory of instrument folders")
    classes: list[str] = []
    files: list[AudioFile] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = sorted(
            p.relative_to(root).as_posix()
            for p in folder.rglob("*")
            if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file() and not _hidden(p.relative_to(root))
        )
        if found:
            files += [AudioFile(name, len(classes)) for name in found]
            classes.append(folder.name)
    if not classes:
        raise InputError(
            str(root), f"no instrument folders with audio files ({', '.join(AUDIO_SUFFIXES)}) inside"
        )
    return tuple(classes), files


def read_audio(source: str | os.PathLike | bytes, sample_rate_hz: int) -> np.ndarray:
    """Mono float32 samples at `sample_rate_hz` (librosa over soundfile: AIFF, WAV, FLAC; 16/24 bit)."""
    import librosa
    import soundfile

    with soundfile.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else source) as sound:
        y, _ = librosa.load(sound, sr=sample_rate_hz, mono=True, res_type="soxr_hq")
    return y


def file_features(featurizer: NoteFeaturizer, item: AudioFile, source: str | os.PathLike | bytes) -> FileFeatures:
    """Features of one file; unreadable or unusable audio gives a skipped result, never an error."""
    empty = np.zeros((0, featurizer.recipe.n_features), dtype=np.float32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y = read_audio(source, featurizer.recipe.sample_rate_hz)
    except Exception as exc:  # noqa: BLE001 - any decode failure means: unreadable or corrupt
        return FileFeatures(item.name, item.label, empty, 0.0, f"unreadable: {_one_line(exc)}")
    audio_s = len(y) / featurizer.recipe.sample_rate_hz
    try:
        return FileFeatures(item.name, item.label, featurizer(y), audio_s)
    except UnusableAudio as exc:
        return FileFeatures(item.name, item.label, empty, audio_s, str(exc))


def extract_chunk(recipe: FeatureRecipe, root: str, chunk: list) -> list[FileFeatures]:
    """Worker side: one featurizer per chunk; items are AudioFile or (AudioFile, bytes)."""
    featurizer = NoteFeaturizer(recipe)
    out = []
    for entry in chunk:
        item, source = entry if isinstance(entry, tuple) else (entry, os.path.join(root, entry.name))
        out.append(file_features(featurizer, item, source))
    return out


def extract_files(
    audio_dir: str | os.PathLike,
    files: list[AudioFile],
    recipe: FeatureRecipe,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool = True,
) -> list[FileFeatures]:
    """Features of every file, in input order: local processes, or Ray tasks given `ray_address`."""
    root = str(Path(audio_dir).expanduser())
    work = partial(extract_chunk, recipe, root)
    if ray_address:

        def ship(item: AudioFile) -> tuple[AudioFile, bytes]:  # workers need no shared filesystem
            return item, Path(root, item.name).read_bytes()

        return map_chunks_ray(work, files, ray_address, ship=ship, progress=progress, desc="features")
    return map_chunks(work, files, workers=workers, progress=progress, desc="features")


def check_test_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise InputError("--test-fraction", f"must be in (0, 1), got {test_fraction!r}")


def split_by_file(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over files: True = test. Per class, round(n * test_fraction) files
    (at least 1 and at most n - 1 when the class has 2 or more files), chosen by a seeded RNG."""
    check_test_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        n_test = min(max(round(len(idx) * test_fraction), 1), len(idx) - 1)
        is_test[rng.permutation(idx)[:n_test]] = True
    return is_test


def assemble(
    results: list[FileFeatures],
    classes: tuple[str, ...],
    recipe: FeatureRecipe,
    test_fraction: float,
    seed: int,
    where: str = "audio",
) -> tuple[dict[str, np.ndarray], tuple[str, ...], dict]:
    """Arrays, class names and metadata of the dataset built from per-file results.

    Classes left without any usable file are dropped (labels renumbered, listed).
    Rows keep file order (class, then file name), notes in time order.
    """
    usable = [r for r in results if r.n_notes]
    present = sorted({r.label for r in usable})
    if not present:
        skipped = "; ".join(f"{r.name}: {r.skipped}" for r in results[:3])
        raise InputError(where, f"no file gave any note ({skipped}{'; ...' if len(results) > 3 else ''})")
    relabel = {old: new for new, old in enumerate(present)}
    labels = np.array([relabel[r.label] for r in usable], dtype=np.int64)
    is_test = split_by_file(labels, test_fraction, seed)
    if not is_test.any():
        raise InputError(where, "a split by file needs a class with 2 or more usable files")
    arrays: dict[str, np.ndarray] = {}
    listing: dict[str, list] = {}
    for side, mask in (("train", ~is_test), ("test", is_test)):
        chosen = [r for r, m in zip(usable, mask) if m]
        arrays[f"{side}_x"] = np.concatenate([r.features for r in chosen])
        arrays[f"{side}_y"] = np.concatenate([np.full(r.n_notes, relabel[r.label]) for r in chosen])
        listing[side] = [[r.name, r.n_notes] for r in chosen]
    metadata = {
        "features": {
            "recipe": recipe.to_dict(),
            "description": f"per note: mean, std and mean |frame-to-frame change| of {recipe.n_mfcc} "
            f"MFCCs (librosa, log-mel clamped {recipe.floor_db:g} dB below the note's peak); notes are stretches "
            f"louder than peak - {recipe.top_db:g} dB",
            "names": recipe.feature_names,
        },
        "split": {"rule": "by file, stratified per class", "test_fraction": test_fraction, "seed": seed},
        "counts": {
            "files": len(results),
            "usable_files": len(usable),
            "train_rows": len(arrays["train_y"]),
            "test_rows": len(arrays["test_y"]),
            "audio_s": round(sum(r.audio_s for r in results), 3),
        },
        "skipped": [[r.name, r.skipped] for r in results if not r.n_notes],
        "dropped_classes": [name for label, name in enumerate(classes) if label not in relabel],
        "files": listing,
    }
    return arrays, tuple(classes[label] for label in present), metadata


def audio_to_dataset(
    audio_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    recipe: FeatureRecipe = DEFAULT_RECIPE,
    test_fraction: float = 0.2,
    seed: int = 0,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> FeaturesSummary:
    """The `features` command: find, extract, split by file, write atomically."""
    out = Path(out_dir).expanduser()
    if not overwrite and out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise InputError(str(out), "exists and is not empty; choose a new --out or pass --overwrite")
    if workers is not None and workers < 1:
        raise InputError("--workers", f"must be >= 1, got {workers}")
    check_test_fraction(test_fraction)  # before the long part
    classes, files = find_audio(audio_dir)
    if progress:
        print(f"{len(files)} audio files in {len(classes)} classes", file=sys.stderr)
    results = extract_files(audio_dir, files, recipe, workers, ray_address, progress)
    arrays, kept, metadata = assemble(results, classes, recipe, test_fraction, seed, where=str(audio_dir))
    metadata = {"source": "audio", "audio_dir": str(Path(audio_dir).expanduser().resolve()), **metadata}
    try:
        write_dataset(out, arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"],
                      kept, metadata, overwrite=overwrite)
    except FileExistsError as exc:
        raise InputError(str(out), f"{exc}; pass --overwrite to replace it") from None
    return FeaturesSummary(
        str(out), kept, len(results), len(arrays["train_y"]), len(arrays["test_y"]),
        metadata["counts"]["audio_s"], [(n, why) for n, why in metadata["skipped"]], metadata["dropped_classes"],
    )


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)  # e.g. macOS "._x.aiff" files


def _one_line(exc: Exception) -> str:
    """The decoder's own words, without the path or buffer address (metadata stays deterministic)."""
    text = getattr(exc, "error_string", None) or str(exc)  # soundfile: "Format not recognised."
    return " ".join(text.split())[:200] or type(exc).__name__
