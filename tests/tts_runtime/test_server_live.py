"""A real uvicorn server: unchanged OpenAI clients work, and the residency event stream follows changes."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import soundfile as sf
from fastapi import FastAPI

from support.background import serve_in_thread
from tts_runtime.server import create_app
from tts_runtime.settings import Settings

TINY = {
    "name": "tiny",
    "backend": "torch",
    "factory": "support.tiny:factory",
    "execution": "inline",
    "voices": ["alto", "bass"],
}


@pytest.fixture
def app() -> FastAPI:
    settings = Settings(
        models_json=json.dumps({"models": [TINY]}), device="cpu", events_keepalive_seconds=0.2
    )
    return create_app(settings)


@pytest.fixture
def base_url(app: FastAPI) -> Iterator[str]:
    with serve_in_thread(app) as url:
        yield url


def test_the_official_openai_client_works_unchanged(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0)
    speech = client.audio.speech.create(
        model="tts-1", voice="alloy", input="Hello there.", response_format="wav"
    )
    samples, rate = sf.read(io.BytesIO(speech.content), dtype="float32")
    assert rate == 16000 and samples.size == 160 * len("Hello there.")
    default_format = client.audio.speech.create(model="tts-1-hd", voice="nova", input="Hi.")
    assert sf.info(io.BytesIO(default_format.content)).format == "MP3"
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="coral", input="Streaming.", response_format="pcm", speed=2.0
    ) as streamed:
        body = b"".join(streamed.iter_bytes())
    assert len(body) == 2 * int(160 * len("Streaming.") / 2.0)
    assert [m.id for m in client.models.list()] == ["tiny"]
    with pytest.raises(openai.BadRequestError) as bad:
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hi", response_format="aac")  # type: ignore[arg-type]
    assert "mp3, opus, flac, wav, pcm" in str(bad.value)
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model="no-such-model", voice="alloy", input="Hi")


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any] | None]:
    """SSE `data:` frames as reports; None for a keep-alive comment."""
    for line in lines:
        if line.startswith("data: "):
            yield json.loads(line[len("data: ") :])
        elif line.startswith(":"):
            yield None


def test_event_stream_sends_the_report_then_every_change(base_url: str) -> None:
    with (
        httpx.Client(base_url=base_url, timeout=10) as client,
        client.stream("GET", "/v1/residency/events") as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = _events(stream.iter_lines())
        first = next(events)
        assert first is not None and first["models"][0]["state"] == "unloaded"
        assert next(events) is None  # keep-alive comment while nothing changes
        assert client.post("/v1/models/tiny/load").status_code == 200
        seen = []
        for event in events:
            if event is not None:
                seen.append(event["models"][0]["state"])
                if seen[-1] == "gpu":
                    break
        assert seen[-1] == "gpu"
        assert client.post("/v1/models/tiny/offload").status_code == 200
        following = next(e for e in events if e is not None)
        assert following["models"][0]["state"] == "cpu"


def test_event_stream_ends_when_the_server_drains(app: FastAPI, base_url: str) -> None:
    with (
        httpx.Client(base_url=base_url, timeout=10) as client,
        client.stream("GET", "/v1/residency/events") as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")
        app.state.runtime.drain.begin()
        rest = list(lines)  # returns only because the server closed the stream
        assert all(not line.startswith("data: ") for line in rest)
        assert client.get("/readyz").status_code == 503


def test_a_client_that_hangs_up_releases_its_subscription(app: FastAPI, base_url: str) -> None:
    engine = app.state.runtime.engine
    subscribe, released = engine.subscribe, threading.Event()

    def tracked(callback: Any) -> Any:
        unsubscribe = subscribe(callback)

        def release() -> None:
            unsubscribe()
            released.set()

        return release

    engine.subscribe = tracked
    with (
        httpx.Client(base_url=base_url, timeout=10) as client,
        client.stream("GET", "/v1/residency/events") as stream,
    ):
        assert next(stream.iter_lines()).startswith("data: ")
    # Closed by the client with nothing changing: only the server noticing the hang-up ends the stream.
    assert released.wait(10), "the stream kept its engine subscription after the client left"
