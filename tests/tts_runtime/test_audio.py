"""Audio encoding: every supported format decodes back to the samples it was given."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from tts_runtime.server import audio

RATE = 24000


def tone(seconds: float = 0.5, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def test_wav_is_16_bit_mono_at_the_model_rate() -> None:
    samples = tone()
    data = audio.encode(samples, RATE, "wav")
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
    info = sf.info(io.BytesIO(data))
    assert (rate, info.channels, info.subtype) == (RATE, 1, "PCM_16")
    np.testing.assert_allclose(decoded, samples, atol=1 / 16000)


def test_pcm_is_raw_signed_16_bit_little_endian() -> None:
    samples = np.array([0.0, 1.0, -1.0, 0.5, 2.0], dtype=np.float32)  # 2.0 is clipped, not wrapped
    data = audio.encode(samples, RATE, "pcm")
    assert np.frombuffer(data, "<i2").tolist() == [0, 32767, -32767, 16384, 32767]


def test_flac_round_trips_losslessly_at_16_bit() -> None:
    samples = tone()
    data = audio.encode(samples, RATE, "flac")
    assert data[:4] == b"fLaC"
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == RATE
    np.testing.assert_allclose(decoded, np.round(samples * 32767) / 32768, atol=1e-4)


@pytest.mark.parametrize(("fmt", "container"), [("mp3", "MP3"), ("opus", "OGG")])
def test_lossy_formats_decode_to_the_same_duration(fmt: str, container: str) -> None:
    samples = tone(1.0)
    data = audio.encode(samples, RATE, fmt)
    info = sf.info(io.BytesIO(data))
    assert info.format == container
    assert info.samplerate == RATE
    decoded, _ = sf.read(io.BytesIO(data), dtype="float32")
    assert abs(len(decoded) - len(samples)) < 0.1 * RATE
    assert float(np.sqrt(np.mean(decoded**2))) > 0.2  # a 0.5-amplitude tone, not silence


def test_opus_resamples_a_rate_it_cannot_carry() -> None:
    data = audio.encode(tone(0.5, 22050), 22050, "opus")
    assert sf.info(io.BytesIO(data)).samplerate == 24000


def test_aac_is_refused_naming_the_supported_formats() -> None:
    with pytest.raises(audio.UnsupportedFormatError, match="mp3, opus, flac, wav, pcm"):
        audio.encode(tone(), RATE, "aac")


def test_resample_keeps_duration_and_shape() -> None:
    samples = tone(1.0, 16000)
    out = audio.resample(samples, 16000, 48000)
    assert out.dtype == np.float32 and len(out) == 48000
    assert out[0] == samples[0] and abs(out[-1] - samples[-1]) < 1e-6
