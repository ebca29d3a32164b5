"""Audio-to-features speed as a multiple of real time per core, after warm-up.

    python benchmarks/bench_features.py                    # 120 recordings, ~1 min
    python benchmarks/bench_features.py --per-class 4 --workers 2

Writes UIowa-like recordings (synthetic instruments, 44.1 kHz 16-bit AIFF, 6 notes
separated by silence) to a temp dir, then times the real `features` path on them:
decode + resample to 22.05 kHz (librosa over soundfile), note split, 120 MFCC
features per note. Measured: one process after warm-up (the per-core figure; best
of --repeats), the same with decoding alone, and the process pool over all cores
including worker start-up. Prints one JSON line per measurement, then a table.
Target: >= 100x real time per core.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import soundfile as sf

from trainables.data.audio_dataset import extract_chunk, extract_files, find_audio, read_audio
from trainables.data.note_features import FeatureRecipe
from trainables.data.parallel import available_cpus
from trainables.data.synthetic import VOICES, Recording, SynthConfig, render_recording

TARGET_X_REALTIME_PER_CORE = 100.0
FILE_SAMPLE_RATE_HZ = 44100


def write_recordings(root: Path, per_class: int) -> None:
    config = SynthConfig()
    for label in range(len(VOICES)):
        for index in range(per_class):
            name, y = render_recording(config, VOICES, Recording(label, index), FILE_SAMPLE_RATE_HZ)
            path = root / f"{name}.aiff"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, y, FILE_SAMPLE_RATE_HZ, subtype="PCM_16")


def best_of(repeats: int, fn) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--per-class", type=int, default=12, help="recordings per instrument (10 instruments)")
    parser.add_argument("--workers", type=int, default=available_cpus(), help="processes for the pool run")
    parser.add_argument("--repeats", type=int, default=3, help="single-process runs; the best counts")
    args = parser.parse_args()
    recipe = FeatureRecipe()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_recordings(root, args.per_class)
        _, files = find_audio(root)
        extract_chunk(recipe, tmp, files[:5])  # warm-up: imports, numba caches, filterbank
        wall_s, results = best_of(args.repeats, lambda: extract_chunk(recipe, tmp, files))
        audio_s = sum(r.audio_s for r in results)
        notes = sum(r.n_notes for r in results)
        rows.append(("one process, warm", 1, wall_s))
        decode_s, _ = best_of(args.repeats, lambda: [read_audio(root / f.name, recipe.sample_rate_hz) for f in files])
        rows.append(("  of which decode+resample", 1, decode_s))
        pool_s, _ = best_of(1, lambda: extract_files(root, files, recipe, workers=args.workers, progress=False))
        rows.append((f"pool, {args.workers} workers, cold start", args.workers, pool_s))
    for mode, cores, seconds in rows:
        print(json.dumps({
            "bench": "features", "mode": mode.strip(), "files": len(files), "notes": notes,
            "audio_s": round(audio_s, 2), "wall_s": round(seconds, 3), "cores": cores,
            "x_realtime": round(audio_s / seconds, 1), "x_realtime_per_core": round(audio_s / seconds / cores, 1),
        }))
    print(f"\n{len(files)} files, {notes} notes, {audio_s:.0f} s of audio "
          f"(target >= {TARGET_X_REALTIME_PER_CORE:.0f}x real time per core)")
    print(f"{'mode':<34}{'wall s':>8}{'x real time':>13}{'per core':>10}")
    for mode, cores, seconds in rows:
        print(f"{mode:<34}{seconds:>8.2f}{audio_s / seconds:>13.0f}{audio_s / seconds / cores:>10.0f}")


if __name__ == "__main__":
    main()
