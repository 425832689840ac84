"""Read audio files as 16 kHz mono float32, with clear errors for bad files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import soxr

SAMPLE_RATE = 16_000


class AudioError(ValueError):
    """An audio file that cannot be used: missing, unreadable, empty or silent-length."""


def to_mono_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mix down to mono and resample to 16 kHz float32."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if sample_rate != SAMPLE_RATE:
        samples = soxr.resample(samples, sample_rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(samples, dtype=np.float32)


def read_audio(path: str | Path) -> np.ndarray:
    """Read one audio file (anything libsndfile reads) as 16 kHz mono float32."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        samples, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=False)
    except Exception as err:  # libsndfile raises several types for corrupt files
        raise AudioError(f"cannot decode audio file {path}: {err}") from err
    if samples.size == 0:
        raise AudioError(f"audio file is empty (0 samples): {path}")
    return to_mono_16k(samples, sample_rate)
