"""Streamed speech in-process: every format's chunks join into one clip, SSE events, the 400s."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import numpy as np
import pytest

from support.asgi import running
from support.decode import decode
from tts_runtime.engine.backends import FADE_SECONDS, segmented
from tts_runtime.engine.segmenter import split
from tts_runtime.server import audio
from tts_runtime.settings import Settings

TINY_RATE = 16000
HOP = 160  # tiny's samples per input byte
# Nine sentences: several segments (a short first one, then joined ones), so there are joins to check.
TEXT = " ".join(
    f"Sentence {n} talks about the weather, the trains and the price of bread in the town of {town}."
    for n, town in enumerate(["Ely", "Bath", "Hull", "York", "Wells", "Ripon", "Derby", "Truro", "Leeds"])
)


def models(*specs: dict[str, Any]) -> Settings:
    return Settings(models_json=json.dumps({"models": list(specs)}), device="cpu")


TINY = {
    "name": "tiny",
    "backend": "torch",
    "factory": "support.tiny:factory",
    "execution": "inline",
    "voices": ["alto", "bass"],
}
HIBARI = {"name": "hibari", "backend": "hibari", "execution": "inline", "voices": ["heart"]}


async def speak(client: httpx.AsyncClient, model: str = "tiny", **body: Any) -> httpx.Response:
    payload = {"model": model, "input": TEXT, "response_format": "pcm", **body}
    return await client.post("/v1/audio/speech", json=payload)


def pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<i2")


def test_runtime_segments_are_faded_at_every_join() -> None:
    def synthesize(text: str) -> tuple[np.ndarray, int]:
        return np.full(len(text) * HOP, 0.5, np.float32), TINY_RATE  # a loud constant: any join would click

    segments = split(TEXT)
    pieces = [samples for samples, _ in segmented(TEXT, synthesize)]
    assert len(pieces) == len(segments) >= 3
    fade = int(TINY_RATE * FADE_SECONDS)
    for i, piece in enumerate(pieces):
        assert piece.size == len(segments[i].text) * HOP
        # Silent at each join, full level inside: the joined clip never jumps.
        if i > 0:
            assert piece[0] == 0.0
        if i < len(pieces) - 1:
            assert piece[-1] == 0.0
        assert np.all(piece[fade:-fade] == 0.5)
    joined = np.concatenate(pieces)
    assert np.abs(np.diff(joined)).max() < 0.5 * np.pi / fade  # no step bigger than the ramp's


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
async def test_each_format_streams_as_one_clip(fmt: str) -> None:
    """The body is the chunks as sent, joined: one header, and it decodes to the clip the pcm stream
    carries (lossless formats sample for sample, lossy ones as the same sound, same length)."""
    async with running(models(TINY), client_timeout=60) as (_, client):
        reference = await speak(client, response_format="pcm")
        response = await speak(client, response_format=fmt)
    assert response.status_code == 200 and reference.status_code == 200, response.text
    assert "content-length" not in response.headers  # sent as made, chunked
    expected = pcm(reference.content).astype(np.float32) / 32767.0
    segments = split(TEXT)
    assert expected.size == HOP * sum(len(s.text) for s in segments)
    body = response.content
    header = {"wav": b"RIFF", "flac": b"fLaC", "opus": b"OpusHead", "mp3": b"Xing"}[fmt]
    assert body.count(header) <= 1 and (fmt == "mp3" or body.count(header) == 1)
    decoded, rate = decode(body, fmt)
    if fmt in ("wav", "flac"):
        assert rate == TINY_RATE
        np.testing.assert_allclose(decoded, expected, atol=1.5 / 32767)
        if fmt == "wav":
            assert body[4:8] == b"\xff\xff\xff\xff" and body[40:44] == b"\xff\xff\xff\xff"  # length unknown
        return
    # Lossy: the stream decodes to what the same codec makes of the whole clip in one go (a join that
    # clicked, repeated or dropped audio would not), give or take the codec's delay and padding.
    whole, whole_rate = decode(audio.encode(expected, TINY_RATE, fmt), fmt)
    assert rate == whole_rate
    assert whole.size - 0.01 * rate <= decoded.size < whole.size + 0.2 * rate, (decoded.size, whole.size)
    lag = _best_lag(decoded, whole, max_lag=int(0.2 * rate))
    n = min(decoded.size - lag, whole.size)
    correlation = np.corrcoef(decoded[lag : lag + n], whole[:n])[0, 1]
    assert correlation > 0.99, correlation


def _best_lag(signal: np.ndarray, reference: np.ndarray, max_lag: int) -> int:
    head = reference[max_lag : max_lag + reference.size // 4]
    start = max_lag + np.arange(-max_lag, max_lag)
    scores = [float(np.dot(signal[at : at + head.size], head)) for at in start]
    return int(np.argmax(scores)) - max_lag


async def test_hibari_streams_the_same_clip_it_sends_whole() -> None:
    async with running(models(HIBARI), client_timeout=60) as (_, client):
        whole = await speak(client, "hibari", stream=False)
        streamed = await speak(client, "hibari")
    assert whole.status_code == streamed.status_code == 200
    assert whole.headers["content-length"] and "content-length" not in streamed.headers
    assert streamed.content == whole.content and len(whole.content) > 24000 * 2 * 5


async def test_sse_sends_openai_events_then_done_with_usage() -> None:
    async with running(models(TINY), client_timeout=60) as (_, client):
        reference = await speak(client)
        response = await speak(client, stream_format="sse")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = response.text.splitlines()
    events = [json.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]
    names = [line[len("event: ") :] for line in lines if line.startswith("event: ")]
    assert [e["type"] for e in events] == names
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"} and len(events) >= 3
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert audio == reference.content
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    seconds = len(audio) / 2 / TINY_RATE
    assert done["usage"] == {
        "input_tokens": len(TEXT),
        "output_tokens": round(seconds * 1000),
        "total_tokens": len(TEXT) + round(seconds * 1000),
    }


async def test_a_failure_mid_stream_is_an_error_event() -> None:
    crashing = {
        **TINY,
        "name": "crashing",
        "factory": "support.faults:crashing_factory",
        "execution": "worker",
    }
    # A first sentence too long to share the short first segment with the next one.
    first = ("The first sentence is long enough to be a segment of its own " + "and more " * 20)[:155]
    first += "end."
    text = f"{first} crash"
    assert [s.text for s in split(text)] == [first, "crash"]  # the worker dies on the second segment
    async with running(models(crashing), client_timeout=60) as (_, client):
        response = await speak(client, "crashing", input=text, stream_format="sse")
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[0]["type"] == "speech.audio.delta"
        assert events[-1]["type"] == "error"
        assert events[-1]["error"]["code"] == "worker_crashed"
        assert "exited" in events[-1]["error"]["message"]
        report = (await client.get("/v1/residency")).json()["models"][0]
        assert report["leases"] == 0


@pytest.mark.parametrize("text", ["😀😀😀", "你好世界", "مرحبا بالعالم"])
@pytest.mark.parametrize(
    "body", [{"stream": False}, {}, {"stream_format": "sse"}], ids=["whole", "audio", "sse"]
)
async def test_text_the_voice_cannot_speak_is_400(text: str, body: dict[str, Any]) -> None:
    async with running(models(HIBARI), client_timeout=60) as (_, client):
        response = await speak(client, "hibari", input=text, response_format="mp3", **body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "no_audio" and error["param"] == "input"
        assert "no audio" in error["message"]
        assert (await client.get("/v1/residency")).json()["models"][0]["leases"] == 0
        # Speakable text around the emoji still speaks.
        assert (await speak(client, "hibari", input=f"Hello {text}.")).status_code == 200


async def test_speed_is_what_the_model_does_or_a_400() -> None:
    async with running(models(HIBARI), client_timeout=60) as (_, client):
        text = "The quick brown fox jumps over the lazy dog near the river bank."
        normal = await speak(client, "hibari", input=text)
        double = await speak(client, "hibari", input=text, speed=2.0)
        half = await speak(client, "hibari", input=text, speed=0.5)
        refused = await speak(client, "hibari", input=text, speed=4.0)
    ratio_fast = len(normal.content) / len(double.content)
    ratio_slow = len(normal.content) / len(half.content)
    assert 1.7 < ratio_fast < 2.2 and 0.45 < ratio_slow < 0.55, (ratio_fast, ratio_slow)
    assert refused.status_code == 400
    assert "0.25 to 2" in refused.json()["error"]["message"]
