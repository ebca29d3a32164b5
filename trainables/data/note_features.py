"""Audio samples -> notes -> one 120-dimensional MFCC feature vector per note.

    from trainables.data.note_features import FeatureRecipe, NoteFeaturizer
    featurizer = NoteFeaturizer(FeatureRecipe())
    features = featurizer(y)        # y: mono float32 at recipe.sample_rate_hz -> (n_notes, 120)

A note is a stretch of frames louder than (loudest frame - `top_db`, RMS over a
46 ms window), with gaps
shorter than `min_silence_s` bridged and stretches shorter than `min_note_s`
dropped: the UIowa recordings hold several notes separated by silence. Each
note is summarised by the mean, the spread (std) and the change over time (mean
absolute frame-to-frame difference) of its MFCCs, so sustained timbre, vibrato
and attack/decay all show. One STFT per file serves both the note split and
the features.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import librosa
import numpy as np

from trainables.errors import InputError

STATS = ("mean", "std", "mean_abs_delta")  # per MFCC coefficient, in this order


class UnusableAudio(Exception):
    """Audio that yields no notes (empty, silent, non-finite, only clicks); the message says why."""


@dataclass(frozen=True)
class FeatureRecipe:
    """The exact recipe, recorded in metadata.json: n_features = n_mfcc * len(STATS) (120)."""

    sample_rate_hz: int = 22050  # audio is resampled to this (mono) before anything else
    n_fft: int = 2048  # STFT window, samples (93 ms)
    hop_length: int = 512  # STFT hop, samples (23 ms): one frame
    n_mels: int = 128  # mel bands, Slaney-normalised librosa filters
    fmax_hz: float = 11025.0  # top of the mel filterbank
    n_mfcc: int = 40  # DCT-II (ortho) coefficients of the log-mel spectrum, c0 included
    floor_db: float = 80.0  # log-mel clamped at the note's maximum - floor_db (librosa's top_db)
    top_db: float = 35.0  # frames this far below the file's loudest frame are silence
    min_silence_s: float = 0.1  # quieter gaps shorter than this do not end a note
    min_note_s: float = 0.1  # louder stretches shorter than this are dropped (clicks, breaths)
    silent_peak_dbfs: float = -60.0  # a file whose peak is below this is skipped as silent

    def __post_init__(self) -> None:
        for name in ("sample_rate_hz", "n_fft", "hop_length", "n_mels", "n_mfcc"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(name, f"must be an integer >= 1, got {value!r}")
        if self.n_mfcc > self.n_mels:
            raise InputError("n_mfcc", f"must be <= n_mels ({self.n_mels}), got {self.n_mfcc}")
        if not 0 < self.fmax_hz <= self.sample_rate_hz / 2:
            raise InputError("fmax_hz", f"must be in (0, sample_rate_hz/2], got {self.fmax_hz}")
        for name in ("floor_db", "top_db", "min_silence_s", "min_note_s"):
            if not getattr(self, name) > 0:
                raise InputError(name, f"must be > 0, got {getattr(self, name)!r}")

    @property
    def n_features(self) -> int:
        return self.n_mfcc * len(STATS)

    @property
    def feature_names(self) -> list[str]:
        return [f"mfcc{c}_{stat}" for stat in STATS for c in range(self.n_mfcc)]

    def frames(self, seconds: float) -> int:
        """Whole frames covering `seconds` (at least 1)."""
        return max(1, math.ceil(seconds * self.sample_rate_hz / self.hop_length))

    def to_dict(self) -> dict:
        return {**asdict(self), "stats": list(STATS), "n_features": self.n_features}


DEFAULT_RECIPE = FeatureRecipe()


class NoteFeaturizer:
    """Holds the recipe's mel filterbank (built once) and turns samples into per-note features."""

    def __init__(self, recipe: FeatureRecipe) -> None:
        import scipy.sparse  # here: importing this module (as reading a cached dataset does) needs no SciPy

        self.recipe = recipe
        basis = librosa.filters.mel(
            sr=recipe.sample_rate_hz, n_fft=recipe.n_fft, n_mels=recipe.n_mels, fmax=recipe.fmax_hz
        )
        self.mel_basis = scipy.sparse.csr_matrix(basis)  # ~2k non-zeros of 131k: sparse is 5x faster

    def __call__(self, y: np.ndarray) -> np.ndarray:
        """(n_notes, n_features) float32 for mono samples `y`; raises UnusableAudio."""
        r = self.recipe
        check_audible(y, r.silent_peak_dbfs)
        magnitude = np.abs(librosa.stft(y, n_fft=r.n_fft, hop_length=r.hop_length))
        # Loudness on a short window (2 hops, 46 ms) aligned with the STFT frames: the
        # 93 ms STFT window would smear notes across short silences.
        rms = librosa.feature.rms(y=y, frame_length=2 * r.hop_length, hop_length=r.hop_length)[0]
        spans = note_spans(rms[: magnitude.shape[1]], r)
        if not spans:
            raise UnusableAudio(f"no note longer than {r.min_note_s} s")
        mel_power = np.asarray(self.mel_basis @ (magnitude**2))
        log_mel = librosa.power_to_db(mel_power, ref=1.0, amin=1e-10, top_db=None)
        return np.stack([note_vector(log_mel[:, a:b], r) for a, b in spans]).astype(np.float32)


def check_audible(y: np.ndarray, silent_peak_dbfs: float) -> None:
    """Raise UnusableAudio for empty, non-finite or silent samples."""
    if y.size == 0:
        raise UnusableAudio("empty: no audio samples")
    if not np.isfinite(y).all():
        raise UnusableAudio("corrupt: non-finite samples")
    peak = float(np.abs(y).max())
    peak_dbfs = 20 * math.log10(peak) if peak > 0 else -math.inf
    if peak_dbfs < silent_peak_dbfs:
        raise UnusableAudio(f"silent: peak {peak_dbfs:.0f} dBFS < {silent_peak_dbfs:.0f} dBFS")


def note_spans(rms: np.ndarray, recipe: FeatureRecipe) -> list[tuple[int, int]]:
    """Frame ranges [start, stop) of the notes, from per-frame RMS."""
    level_db = 20 * np.log10(np.maximum(rms, 1e-10))
    loud = np.concatenate([[False], level_db > level_db.max() - recipe.top_db, [False]])
    edges = np.flatnonzero(np.diff(loud.astype(np.int8)))
    runs = list(zip(edges[::2].tolist(), edges[1::2].tolist()))
    merged: list[tuple[int, int]] = []
    min_gap = recipe.frames(recipe.min_silence_s)
    for start, stop in runs:
        if merged and start - merged[-1][1] < min_gap:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    min_len = recipe.frames(recipe.min_note_s)
    return [(a, b) for a, b in merged if b - a >= min_len]


def note_vector(log_mel: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """One note's features: MFCC mean, std and mean |frame-to-frame change| (n_mfcc each)."""
    clamped = np.maximum(log_mel, log_mel.max() - recipe.floor_db)
    mfcc = librosa.feature.mfcc(S=clamped, n_mfcc=recipe.n_mfcc)
    change = np.abs(np.diff(mfcc, axis=1)).mean(axis=1) if mfcc.shape[1] > 1 else np.zeros(len(mfcc))
    return np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1), change])
