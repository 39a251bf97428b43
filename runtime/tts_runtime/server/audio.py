"""Encode float32 mono samples as the audio formats OpenAI's speech API answers with."""

from __future__ import annotations

import io
import struct
from typing import Any, Final

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


# -- streamed ----------------------------------------------------------------------------------------
# libsndfile's command to cut Ogg pages after this much audio (default 1 s: first audio would wait for it).
_SFC_SET_OGG_PAGE_LATENCY_MS: Final = 0x1302
OPUS_PAGE_MS: Final = 100.0
# A WAV header whose sizes say "unknown, read to the end" (what OpenAI's streamed wav carries).
_UNKNOWN: Final = 0xFFFFFFFF


def wav_stream_header(sample_rate: int) -> bytes:
    """RIFF/WAVE header for 16-bit mono PCM of unknown length."""
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    riff = b"RIFF" + struct.pack("<I", _UNKNOWN) + b"WAVE"
    return riff + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", _UNKNOWN)


class _Tail(io.RawIOBase):
    """A seekable sink for libsndfile that hands out what was appended since the last `take()`.

    libsndfile rewrites a few header bytes when the file closes (FLAC's total samples and MD5, MP3's
    LAME tag); those are sent already, and their streamed values (0 = unknown) are valid as they are."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._sent = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._buf)}[whence]
        self._pos = base + offset
        return self._pos

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._buf[self._pos : self._pos + len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def readinto(self, out: Any) -> int:
        view = self._buf[self._pos : self._pos + len(out)]
        out[: len(view)] = view
        self._pos += len(view)
        return len(view)

    def take(self) -> bytes:
        fresh = bytes(self._buf[self._sent :])
        self._sent = len(self._buf)
        return fresh


class _Resampler:
    """Linear resampling across chunk joins: output sample j sits at input position j * rate / target."""

    def __init__(self, rate: int, target: int) -> None:
        self.step = rate / target
        self.next_pos = 0.0  # input position of the next output sample, counted from `offset`
        self.offset = 0  # input samples consumed before `tail`
        self.tail = np.zeros(0, np.float32)  # the last input sample, for the interval across a join

    def __call__(self, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        data = np.concatenate([self.tail, samples])
        start = self.offset - self.tail.size
        last = start + data.size - 1  # absolute position of the newest input sample
        count = max(0, int(np.floor((last - self.next_pos) / self.step)) + 1)
        positions = self.next_pos + self.step * np.arange(count)
        out: npt.NDArray[np.float32] = np.interp(positions - start, np.arange(data.size), data)
        out = out.astype(np.float32)
        self.next_pos += self.step * count
        self.offset = start + data.size
        self.tail = data[-1:]
        return out


class StreamEncoder:
    """One clip encoded piece by piece: `add` returns the bytes ready to send, `finish` the rest.
    Joined, the pieces are one file: one header, one encoder state across every join."""

    def __init__(self, fmt: str, sample_rate: int) -> None:
        if fmt not in SUPPORTED_FORMATS:
            raise UnsupportedFormatError(
                f"response_format {fmt!r} is not supported; use one of {', '.join(SUPPORTED_FORMATS)}"
            )
        self.fmt = fmt
        self.sample_rate = sample_rate
        self._header = wav_stream_header(sample_rate) if fmt == "wav" else b""
        self._file: sf.SoundFile | None = None
        self._resample: _Resampler | None = None
        if fmt in ("mp3", "opus", "flac"):
            self._sink = _Tail()
            rate = sample_rate
            if fmt == "flac":
                kind = ("FLAC", "PCM_16")
            else:
                rate = _codec_rate(sample_rate, _MP3_RATES if fmt == "mp3" else _OPUS_RATES)
                kind = ("MP3", "MPEG_LAYER_III") if fmt == "mp3" else ("OGG", "OPUS")
            if rate != sample_rate:
                self._resample = _Resampler(sample_rate, rate)
            self._file = sf.SoundFile(self._sink, "w", rate, 1, format=kind[0], subtype=kind[1])
            if fmt == "opus":
                latency = sf._ffi.new("double*", OPUS_PAGE_MS)
                sf._snd.sf_command(self._file._file, _SFC_SET_OGG_PAGE_LATENCY_MS, latency, 8)

    def add(self, samples: npt.NDArray[np.floating]) -> bytes:
        mono = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
        if self._file is None:
            head, self._header = self._header, b""
            return head + (mono * 32767.0).round().astype("<i2").tobytes()
        self._file.write(self._resample(mono) if self._resample is not None else mono)
        return self._sink.take()

    def finish(self) -> bytes:
        if self._file is None:
            head, self._header = self._header, b""
            return head
        self._file.close()
        return self._sink.take()
