"""Decode audio bytes as a real client would: FFmpeg's decoders (PyAV), which read streamed files whose
headers say "length unknown" (libsndfile cannot read such a FLAC in one call)."""

from __future__ import annotations

import io

import av
import numpy as np


def decode(data: bytes, fmt: str, pcm_rate: int = 0) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their rate; `pcm` is raw 16-bit little-endian at `pcm_rate`."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32767.0, pcm_rate
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        rate = int(stream.rate or stream.codec_context.sample_rate)
        parts = [_floats(frame.to_ndarray()) for frame in container.decode(stream)]
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), rate


def _floats(samples: np.ndarray) -> np.ndarray:
    """Integer samples scaled as the server scales them (x 32767), float ones as they are."""
    if samples.dtype.kind == "i":
        return (samples.astype(np.float32) / np.iinfo(samples.dtype).max).reshape(-1)
    return samples.astype(np.float32).reshape(-1)
