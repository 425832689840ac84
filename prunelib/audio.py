"""Read audio files as 16 kHz mono float32, with clear errors for bad files."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import soundfile
import soxr

SAMPLE_RATE = 16_000  # Whisper's feature extractor expects 16 kHz
WINDOW_SECONDS = 30.0  # Whisper's encoder reads exactly 30 s of log-mel features


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


def _wav_declared_frames(path: Path) -> int | None:
    """Frames a RIFF/WAVE header says its data chunk holds; None when not a WAV or the size is unknown.

    libsndfile quietly shortens a WAV whose data ends before its header says, so a file cut
    in transit would decode as half an utterance without a word; the header is read here instead.
    """
    with open(path, "rb") as handle:
        riff = handle.read(12)
        if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"fmt ":
                fmt = handle.read(size + (size & 1))
                block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
            elif chunk_id == b"data":
                # Streaming writers leave 0 or 0xFFFFFFFF when they cannot know the length.
                if not block_align or size in (0, 0xFFFFFFFF):
                    return None
                return size // block_align
            else:
                handle.seek(size + (size & 1), 1)


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
    declared = _wav_declared_frames(path)
    if declared is not None and len(samples) < declared:
        raise AudioError(f"audio file is truncated: its header declares {declared / sample_rate:.2f} s, "
                         f"the file holds {len(samples) / sample_rate:.2f} s: {path}")
    return to_mono_16k(samples, sample_rate)
