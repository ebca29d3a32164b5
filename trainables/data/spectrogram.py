"""The seed's mel spectrogram of one audio file, saved as a PNG.

    instrument-sweep show-audio Flute/Flute.vib.ff.C4B4.aiff --out flute.png

As in the seed: librosa.load (mono, 22050 Hz), 128 mel bands up to 8000 Hz, power in
dB relative to the maximum, mel and time axes, a colorbar and a title.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from trainables.errors import InputError
from trainables.data.audio_dataset import read_audio

SAMPLE_RATE_HZ = 22050  # librosa.load's default, as the seed loads
N_MELS = 128
FMAX_HZ = 8000.0


def save_mel_spectrogram(audio_path: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Render the seed's mel spectrogram of `audio_path` to `out_png`; returns the PNG path."""
    import librosa
    import librosa.display
    from matplotlib.figure import Figure  # no pyplot: no global figure state

    audio_path, out_png = Path(audio_path).expanduser(), Path(out_png).expanduser()
    if not audio_path.is_file():
        raise InputError(str(audio_path), "no such audio file")
    sr = SAMPLE_RATE_HZ
    try:
        y = read_audio(audio_path, sr)
    except Exception as exc:  # noqa: BLE001 - any decode failure
        raise InputError(str(audio_path), f"cannot read audio ({' '.join(str(exc).split())[:200]})") from None
    if y.size == 0:
        raise InputError(str(audio_path), "holds no audio samples")
    mel = librosa.feature.melspectrogram(y=y, sr=sr, n_mels=N_MELS, fmax=FMAX_HZ)
    mel_db = librosa.power_to_db(mel, ref=np.max)
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.subplots()
    img = librosa.display.specshow(mel_db, x_axis="time", y_axis="mel", sr=sr, fmax=FMAX_HZ, ax=ax)
    fig.colorbar(img, ax=ax, format="%+2.0f dB")
    ax.set_title(f"Mel-frequency spectrogram: {audio_path.name}")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png
