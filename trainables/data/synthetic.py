"""Built-in synthetic instruments: 10 orchestral-like classes rendered as audio, then
passed through the same note splitter and feature extractor as real recordings.

    instrument-sweep data synth --out data/synthetic     # write a copy anywhere
    instrument-sweep data info synthetic                  # generate once into the cache, describe

    from trainables.data.synthetic import builtin_dataset_dir
    path = builtin_dataset_dir()     # $INSTRUMENT_SWEEP_CACHE or ~/.cache/instrument-sweep

Each "recording" is like a UIowa file: one instrument, one dynamic (pp, mf, ff),
`notes_per_file` chromatic notes separated by silence. A note is additive synthesis:
harmonic (or slightly inharmonic) partials shaped by the instrument's spectral slope
and formants, per-partial attack and decay envelopes, vibrato, breath/bow/hammer
noise; per recording the player's timbre varies, the tuning drifts a few cents and a
random room colour (EQ bumps, one early reflection) and a noise floor are applied.
Everything is drawn from RNGs seeded by (seed, class, file), so the dataset is
identical for any number of workers. Bump SYNTH_VERSION when the rendering changes;
changed parameters are picked up by the cache key automatically.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from trainables.data.dataset import write_dataset
from trainables.errors import InputError
from trainables.data.audio_dataset import FileFeatures, assemble
from trainables.data.note_features import (
    DEFAULT_RECIPE,
    FeatureRecipe,
    NoteFeaturizer,
    UnusableAudio,
)
from trainables.data.parallel import map_chunks

SYNTH_VERSION = "2"
CACHE_ENV = "INSTRUMENT_SWEEP_CACHE"
DEFAULT_CACHE = "~/.cache/instrument-sweep"
MAX_PARTIALS = 40
DYNAMICS_DB = {"pp": -20.0, "mf": -10.0, "ff": -3.0}  # peak level of the recording, dBFS
NOTE_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")


@dataclass(frozen=True)
class Voice:
    """One instrument's synthesis parameters (levels in dB, times in s, pitches as MIDI numbers)."""

    name: str
    low_midi: int  # lowest note
    high_midi: int  # highest note
    slope_db_per_oct: float  # partial level vs partial number
    formants: tuple[tuple[float, float, float], ...] = ()  # (centre_hz, width_oct, gain_db)
    even_db: float = 0.0  # extra level of even partials below 1 kHz, fading out by 2.5 kHz (clarinet)
    attack_s: float = 0.04
    release_s: float = 0.08
    attack_spread: float = 0.0  # the top partial's attack is (1 + spread) x longer (brass)
    decay_db_per_s: float = 0.0  # level drop while held (piano)
    partial_decay_db_per_s: float = 0.0  # extra decay per partial number (piano)
    vibrato_hz: float = 0.0
    vibrato_cents: float = 0.0
    attack_glide_cents: float = 0.0  # pitch starts this far off and settles within the attack (brass lips)
    noise_db: float = -50.0  # breath / bow noise vs the harmonic part
    noise_band_hz: tuple[float, float] = (1000.0, 6000.0)
    chiff_db: float = -40.0  # noise burst at the attack (hammer, tonguing, bow bite)
    inharmonicity: float = 0.0  # B in f_k = k f0 sqrt(1 + B k^2)
    dyn_brightness_db_per_oct: float = 1.0  # ff is this much brighter per octave than mf


VOICES: tuple[Voice, ...] = (
    Voice("Flute", 60, 96, -9.0, ((800.0, 1.0, 3.0),), attack_s=0.08, release_s=0.12,
          vibrato_hz=5.0, vibrato_cents=12.0, noise_db=-24.0, noise_band_hz=(1500.0, 9000.0),
          chiff_db=-22.0, dyn_brightness_db_per_oct=0.5),
    Voice("Oboe", 58, 91, -2.0, ((1100.0, 0.35, 14.0), (2900.0, 0.4, 8.0)), attack_s=0.02,
          vibrato_hz=5.5, vibrato_cents=10.0, noise_db=-40.0, noise_band_hz=(2000.0, 6000.0),
          dyn_brightness_db_per_oct=0.5),
    Voice("Clarinet", 50, 91, -6.0, ((1500.0, 0.6, 4.0),), even_db=-25.0, attack_s=0.05,
          noise_db=-42.0, noise_band_hz=(300.0, 2500.0), dyn_brightness_db_per_oct=0.5),
    Voice("Bassoon", 34, 75, -5.0, ((480.0, 0.35, 14.0), (1150.0, 0.4, 6.0)), attack_s=0.05,
          vibrato_hz=4.5, vibrato_cents=8.0, noise_db=-38.0, noise_band_hz=(200.0, 1500.0),
          dyn_brightness_db_per_oct=0.5),
    Voice("Saxophone", 49, 80, -3.0, ((750.0, 0.6, 6.0), (1800.0, 0.8, 4.0)), attack_s=0.03,
          vibrato_hz=5.5, vibrato_cents=18.0, noise_db=-30.0, noise_band_hz=(2000.0, 8000.0)),
    Voice("Trumpet", 54, 86, -1.5, ((1300.0, 0.8, 10.0),), attack_s=0.03, attack_spread=2.0,
          attack_glide_cents=-40.0, noise_db=-48.0, dyn_brightness_db_per_oct=3.0),
    Voice("Trombone", 40, 77, -3.0, ((550.0, 0.6, 10.0),), attack_s=0.07, attack_spread=3.0,
          attack_glide_cents=-60.0, noise_db=-48.0, dyn_brightness_db_per_oct=3.0),
    Voice("Violin", 55, 100, -2.5, ((290.0, 0.3, 6.0), (1500.0, 0.4, -6.0), (3000.0, 0.6, 10.0)),
          attack_s=0.08, vibrato_hz=6.0, vibrato_cents=25.0, noise_db=-30.0,
          noise_band_hz=(2000.0, 7000.0), chiff_db=-30.0),
    Voice("Cello", 36, 81, -3.0, ((220.0, 0.3, 6.0), (650.0, 0.5, 4.0), (2000.0, 0.6, 6.0)),
          attack_s=0.09, vibrato_hz=5.0, vibrato_cents=20.0, noise_db=-32.0,
          noise_band_hz=(1000.0, 5000.0), chiff_db=-30.0),
    Voice("Piano", 36, 96, -7.0, (), attack_s=0.004, release_s=0.12, decay_db_per_s=12.0,
          partial_decay_db_per_s=1.0, noise_db=-60.0, chiff_db=-22.0, inharmonicity=3e-4),
)


@dataclass(frozen=True)
class SynthConfig:
    """Size and difficulty of the synthetic dataset (the defaults are the built-in one)."""

    files_per_class: int = 200  # recordings per instrument; rows = 10 x files x notes
    notes_per_file: int = 6  # ascending chromatic notes per recording, as in UIowa files
    note_s: tuple[float, float] = (0.25, 0.6)  # note length range (short: cheap to render)
    gap_s: tuple[float, float] = (0.2, 0.4)  # silence between notes
    variation: float = 0.5  # scale of per-recording timbre variation: the difficulty knob
    noise_floor_db: float = -60.0  # recording noise vs its peak
    test_fraction: float = 0.2  # share of each instrument's recordings held out for test
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("files_per_class", "notes_per_file"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(name, f"must be an integer >= 1, got {value!r}")
        if self.files_per_class < 2:
            raise InputError("files_per_class", "must be >= 2 (the split is by file)")
        if not 0.0 < self.test_fraction < 1.0:
            raise InputError("test_fraction", f"must be in (0, 1), got {self.test_fraction!r}")
        if not 0.0 < self.note_s[0] <= self.note_s[1]:
            raise InputError("note_s", f"must be 0 < low <= high, got {self.note_s!r}")
        if not self.variation >= 0:
            raise InputError("variation", f"must be >= 0, got {self.variation!r}")


@dataclass(frozen=True)
class Recording:
    """Which recording to render: the `index`-th file of instrument `label`."""

    label: int
    index: int


@dataclass(frozen=True)
class Take:
    """One recording's player: the voice as played this time (dynamic, tuning, timbre)."""

    voice: Voice
    dynamic: str  # pp, mf or ff
    tuning_cents: float
    vibrato_hz: float
    vibrato_cents: float
    slope_db_per_oct: float
    formants: tuple[tuple[float, float, float], ...]
    noise_db: float


# -- rendering -------------------------------------------------------------------------------


def render_recording(
    config: SynthConfig, voices: tuple[Voice, ...], rec: Recording, sample_rate_hz: int
) -> tuple[str, np.ndarray]:
    """(UIowa-style file name, mono float32 samples) of one recording; a pure function of its inputs."""
    rng = np.random.default_rng([config.seed, rec.label, rec.index])
    voice = voices[rec.label]
    take = _draw_take(voice, config.variation, rng)
    n_notes = min(config.notes_per_file, voice.high_midi - voice.low_midi + 1)
    first = int(rng.integers(voice.low_midi, voice.high_midi - n_notes + 2))
    pieces = [np.zeros(_samples(rng.uniform(*config.gap_s), sample_rate_hz), np.float32)]
    for midi in range(first, first + n_notes):
        cents = take.tuning_cents + rng.normal(0.0, 4.0)
        f0_hz = 440.0 * 2 ** ((midi - 69 + cents / 100) / 12)
        dur_s = rng.uniform(*config.note_s)
        pieces.append(render_note(take, f0_hz, dur_s, sample_rate_hz, rng))
        pieces.append(np.zeros(_samples(rng.uniform(*config.gap_s), sample_rate_hz), np.float32))
    y = room_colour(np.concatenate(pieces), sample_rate_hz, rng)
    y *= 10 ** ((DYNAMICS_DB[take.dynamic] + rng.normal(0, 1.5)) / 20) / max(float(np.abs(y).max()), 1e-9)
    floor = np.abs(y).max() * 10 ** ((config.noise_floor_db + rng.normal(0, 3)) / 20)
    y += floor * rng.standard_normal(len(y), dtype=np.float32)
    name = f"{voice.name}/{voice.name}.{take.dynamic}.{_note(first)}{_note(first + n_notes - 1)}.{rec.index:04d}"
    return name, y.astype(np.float32)


def _draw_take(voice: Voice, variation: float, rng: np.random.Generator) -> Take:
    v = variation
    return Take(
        voice=voice,
        dynamic=str(rng.choice(list(DYNAMICS_DB))),
        tuning_cents=rng.normal(0.0, 8.0),
        vibrato_hz=voice.vibrato_hz * (1 + 0.1 * v * rng.normal()),
        vibrato_cents=voice.vibrato_cents * math.exp(0.3 * v * rng.normal()),
        slope_db_per_oct=voice.slope_db_per_oct + 1.5 * v * rng.normal(),
        formants=tuple(
            (hz * 2 ** (0.1 * v * rng.normal()), width, gain + 2.0 * v * rng.normal())
            for hz, width, gain in voice.formants
        ),
        noise_db=voice.noise_db + 4.0 * v * rng.normal(),
    )


def render_note(take: Take, f0_hz: float, dur_s: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One note: partials with per-partial envelopes, vibrato, noise; float32."""
    voice = take.voice
    n = _samples(dur_s, sr)
    t = np.arange(n, dtype=np.float32) / np.float32(sr)
    cycles = pitch_cycles(take, f0_hz, t, sr, rng)
    k, ratio, amp = partials(take, f0_hz, sr)
    attack_s = voice.attack_s * (1 + voice.attack_spread * (k - 1) / max(k[-1] - 1, 1))
    decay_per_s = (voice.decay_db_per_s + voice.partial_decay_db_per_s * (k - 1)) / 8.686
    start_turns = rng.uniform(0, 1, len(k))
    harmonic = sum_partials(ratio, amp, cycles, t, attack_s, decay_per_s, start_turns)
    # Noise: breath/bow noise following the note, and a short chiff at the attack.
    body = np.minimum(t / np.float32(voice.attack_s), 1)
    body = 0.5 - 0.5 * np.cos(np.float32(np.pi) * body)
    if voice.decay_db_per_s:
        body *= np.exp(-voice.decay_db_per_s / 8.686 * t)
    level = float(np.sqrt(np.mean(harmonic**2))) + 1e-9
    noise_gain = level * (10 ** (take.noise_db / 20) * body + 10 ** (voice.chiff_db / 20) * np.exp(-t / 0.02))
    y = harmonic + noise_gain * band_noise(n, sr, voice.noise_band_hz, rng)
    return y * np.clip((dur_s - t) / voice.release_s, 0.0, 1.0)


def sum_partials(
    ratio: np.ndarray,
    amp: np.ndarray,
    cycles: np.ndarray,
    t: np.ndarray,
    attack_s: np.ndarray,
    decay_per_s: np.ndarray,
    start_turns: np.ndarray,
    block: int = 1024,
) -> np.ndarray:
    """sum_k amp_k attack_k(t) exp(-decay_k t) sin(2 pi (ratio_k cycles(t) + start_k)), float32.

    Time blocks keep the (partials x block) arrays in cache (5x faster than whole notes).
    The phase is split as int(r) * frac(c) + frac(r) * c so float32 keeps it within 1e-3 rad.
    """

    def col(values) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)[:, None]

    whole, part = col(2 * np.pi * np.floor(ratio)), col(2 * np.pi * (ratio - np.floor(ratio)))
    start, gain, attack, decay = col(2 * np.pi * start_turns), col(amp), col(attack_s), col(decay_per_s)
    frac, coarse = (cycles % 1.0).astype(np.float32), cycles.astype(np.float32)
    inharmonic, decaying = bool(part.any()), bool(decay.any())
    n_attack = int(np.searchsorted(t, attack.max())) + 1
    out = np.empty(len(t), np.float32)
    for i in range(0, len(t), block):
        span = slice(i, i + block)
        x = whole * frac[None, span]
        if inharmonic:
            x += part * coarse[None, span]
        x += start
        np.sin(x, out=x)
        x *= gain
        if decaying:
            x *= np.exp(-decay * t[None, span])
        if i < n_attack:  # raised-cosine attack, per partial
            x *= 0.5 - 0.5 * np.cos(np.float32(np.pi) * np.minimum(t[None, span] / attack, 1))
        out[span] = x.sum(axis=0)  # not `@`: BLAS threads would fight the worker processes
    return out


def pitch_cycles(take: Take, f0_hz: float, t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Running phase of the fundamental in cycles (float64): vibrato fading in after 0.1 s,
    a slow random wander of a few cents and the attack glide."""
    voice = take.voice
    vib = take.vibrato_cents * np.sin(2 * np.pi * take.vibrato_hz * t + rng.uniform(0, 2 * np.pi))
    vib *= np.clip((t - 0.1) / 0.2, 0.0, 1.0)
    cents = vib + np.interp(t, np.linspace(0, t[-1], 6), rng.normal(0, 2.0, 6))
    if voice.attack_glide_cents:
        cents += voice.attack_glide_cents * np.exp(-t / max(voice.attack_s, 1e-3))
    return np.cumsum(f0_hz / sr * np.exp(cents.astype(np.float64) * (math.log(2) / 1200)))


def partials(take: Take, f0_hz: float, sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partial numbers, frequency ratios and amplitudes (sum 1) of the audible partials."""
    voice = take.voice
    k = np.arange(1, MAX_PARTIALS + 1, dtype=np.float64)
    ratio = k * np.sqrt(1 + voice.inharmonicity * (f0_hz / 261.6) * k**2)  # stiffer strings up high
    below_nyquist = f0_hz * ratio < 0.45 * sr
    k, ratio = k[below_nyquist], ratio[below_nyquist]
    f_hz = f0_hz * ratio
    dyn_slope = {"pp": -1.0, "mf": 0.0, "ff": 1.0}[take.dynamic] * voice.dyn_brightness_db_per_oct
    level_db = (take.slope_db_per_oct + dyn_slope) * np.log2(k)
    for centre_hz, width_oct, gain_db in take.formants:
        level_db += gain_db * np.exp(-0.5 * (np.log2(f_hz / centre_hz) / width_oct) ** 2)
    level_db += np.where(k % 2 == 0, voice.even_db * np.clip((2500 - f_hz) / 1500, 0, 1), 0.0)
    audible = level_db > level_db.max() - 60  # quieter partials cost time and change nothing
    amp = 10 ** (level_db[audible] / 20)
    return k[audible], ratio[audible], amp / amp.sum()


def band_noise(n: int, sr: int, band_hz: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with a smooth band-pass shape."""
    import scipy.fft  # here, not at the top: reading the cached dataset needs no SciPy (0.2 s)

    n_fft = scipy.fft.next_fast_len(n, real=True)
    spectrum = scipy.fft.rfft(rng.standard_normal(n_fft, dtype=np.float32))
    f = np.fft.rfftfreq(n_fft, 1 / sr).astype(np.float32)
    low, high = band_hz
    shape = 1 / (1 + (low / np.maximum(f, 1.0)) ** 4) / (1 + (f / high) ** 4)
    noise = scipy.fft.irfft(spectrum * shape, n_fft)[:n]
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def room_colour(y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Three random EQ bumps (+-1 dB, zero phase) and one early reflection (3-15 ms, gain 0.05-0.25)."""
    import scipy.fft

    n_fft = scipy.fft.next_fast_len(len(y), real=True)
    octaves = np.log2(np.maximum(np.fft.rfftfreq(n_fft, 1 / sr), 20.0)).astype(np.float32)
    gain_db = np.zeros_like(octaves)
    for _ in range(3):
        centre, width, gain = np.log2(rng.uniform(200.0, 8000.0)), rng.uniform(0.5, 1.5), rng.normal(0, 1.0)
        gain_db += np.float32(gain) * np.exp(np.float32(-0.5 / width**2) * (octaves - np.float32(centre)) ** 2)
    out = scipy.fft.irfft(scipy.fft.rfft(y, n_fft) * 10 ** (gain_db / 20), n_fft)[: len(y)]
    delay = int(rng.uniform(0.003, 0.015) * sr)
    out[delay:] += np.float32(rng.uniform(0.05, 0.25)) * out[:-delay].copy()
    return out.astype(np.float32)


def _samples(seconds: float, sr: int) -> int:
    return max(1, round(seconds * sr))


def _note(midi: int) -> str:
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


# -- dataset ---------------------------------------------------------------------------------


def synth_chunk(
    config: SynthConfig, voices: tuple[Voice, ...], recipe: FeatureRecipe, chunk: list[Recording]
) -> list[FileFeatures]:
    """Worker side: render each recording and extract its notes with the real featurizer."""
    featurizer = NoteFeaturizer(recipe)
    out = []
    for rec in chunk:
        name, y = render_recording(config, voices, rec, recipe.sample_rate_hz)
        audio_s = len(y) / recipe.sample_rate_hz
        try:
            out.append(FileFeatures(name, rec.label, featurizer(y), audio_s))
        except UnusableAudio as exc:  # cannot happen with sane parameters; kept honest anyway
            out.append(FileFeatures(name, rec.label, np.zeros((0, recipe.n_features), np.float32), audio_s, str(exc)))
    return out


def generate_synthetic(
    out_dir: str | os.PathLike,
    config: SynthConfig = SynthConfig(),
    recipe: FeatureRecipe = DEFAULT_RECIPE,
    voices: tuple[Voice, ...] = VOICES,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Render, extract, split by recording and write the dataset directory (atomically)."""
    started = time.perf_counter()
    recordings = [Recording(label, i) for label in range(len(voices)) for i in range(config.files_per_class)]
    work = partial(synth_chunk, config, voices, recipe)
    results = map_chunks(work, recordings, workers=workers, progress=progress, desc="synthetic")
    classes = tuple(v.name for v in voices)
    arrays, kept, metadata = assemble(results, classes, recipe, config.test_fraction, config.seed)
    metadata = {
        "source": "synthetic",
        "generator": {
            "version": SYNTH_VERSION,
            "fingerprint": fingerprint(config, recipe, voices),
            "config": asdict(config),
            "voices": [asdict(v) for v in voices],
        },
        **metadata,
    }
    path = write_dataset(out_dir, arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"],
                         kept, metadata, overwrite=overwrite)
    if progress:
        print(f"synthetic dataset: {len(arrays['train_y'])} train + {len(arrays['test_y'])} test rows "
              f"in {time.perf_counter() - started:.1f} s -> {path}", file=sys.stderr)
    return path


def fingerprint(config: SynthConfig, recipe: FeatureRecipe, voices: tuple[Voice, ...]) -> str:
    """Short hash of everything that shapes the dataset (the cache key, with SYNTH_VERSION)."""
    blob = json.dumps([SYNTH_VERSION, asdict(config), recipe.to_dict(), [asdict(v) for v in voices]],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def cache_root_dir(cache_root: Path | None = None) -> Path:
    """`cache_root`, else $INSTRUMENT_SWEEP_CACHE, else ~/.cache/instrument-sweep."""
    return Path(cache_root or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def builtin_dataset_dir(
    cache_root: Path | None = None,
    config: SynthConfig = SynthConfig(),
    recipe: FeatureRecipe = DEFAULT_RECIPE,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """The cached built-in dataset, generated first when missing or when the generator changed.

    The directory name carries SYNTH_VERSION and a fingerprint of the parameters, so a
    new generator never reads an old cache. Two processes generating at once each
    write a private temp dir; the first rename wins and the other uses its result.
    """
    target = cache_root_dir(cache_root) / f"synthetic-v{SYNTH_VERSION}-{fingerprint(config, recipe, VOICES)}"
    if (target / "metadata.json").is_file():
        return target
    if progress:
        print(f"generating the built-in synthetic dataset (once) into {target}", file=sys.stderr)
    try:
        generate_synthetic(target, config, recipe, workers=workers, progress=progress)
    except FileExistsError:  # another process finished first: same inputs, same dataset
        pass
    return target
