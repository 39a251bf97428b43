"""Encode float32 mono samples as the audio formats OpenAI's speech API answers with."""

from __future__ import annotations

import io
from typing import Final

import numpy as np
import numpy.typing as npt
import soundfile as sf

# Order is OpenAI's documentation order; the first is its default.
FORMATS: Final = ("mp3", "opus", "aac", "flac", "wav", "pcm")
SUPPORTED_FORMATS: Final = ("mp3", "opus", "flac", "wav", "pcm")

MEDIA_TYPES: Final = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}

# Rates the codecs accept; other rates are resampled to the nearest one above (or the highest).
_OPUS_RATES: Final = (8000, 12000, 16000, 24000, 48000)
_MP3_RATES: Final = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


class UnsupportedFormatError(ValueError):
    """A response_format this server cannot produce."""


def encode(samples: npt.NDArray[np.floating], sample_rate: int, fmt: str) -> bytes:
    """Mono samples in [-1, 1] → bytes of `fmt` (pcm is raw signed 16-bit little-endian, like OpenAI)."""
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedFormatError(
            f"response_format {fmt!r} is not supported; use one of {', '.join(SUPPORTED_FORMATS)}"
        )
    mono = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
    if fmt == "pcm":
        return (mono * 32767.0).round().astype("<i2").tobytes()
    buffer = io.BytesIO()
    if fmt == "wav":
        sf.write(buffer, mono, sample_rate, format="WAV", subtype="PCM_16")
    elif fmt == "flac":
        sf.write(buffer, mono, sample_rate, format="FLAC", subtype="PCM_16")
    elif fmt == "mp3":
        rate = _codec_rate(sample_rate, _MP3_RATES)
        sf.write(buffer, resample(mono, sample_rate, rate), rate, format="MP3", subtype="MPEG_LAYER_III")
    else:
        rate = _codec_rate(sample_rate, _OPUS_RATES)
        sf.write(buffer, resample(mono, sample_rate, rate), rate, format="OGG", subtype="OPUS")
    return buffer.getvalue()


def resample(samples: npt.NDArray[np.float32], rate: int, target: int) -> npt.NDArray[np.float32]:
    """Linear resampling: enough for a codec's rate constraint, never used on the wav/pcm path."""
    if rate == target or samples.size == 0:
        return samples
    count = max(1, round(samples.size * target / rate))
    positions = np.linspace(0.0, samples.size - 1, count)
    return np.interp(positions, np.arange(samples.size), samples).astype(np.float32)


def _codec_rate(rate: int, allowed: tuple[int, ...]) -> int:
    return next((candidate for candidate in allowed if candidate >= rate), allowed[-1])
