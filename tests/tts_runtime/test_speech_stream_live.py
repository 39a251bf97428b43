"""Streamed speech from a real `tts-runtime serve` process with worker processes: the official `openai`
client streams both formats, one lease covers a whole stream, and a client that leaves stops the model."""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from support.decode import decode
from support.procs import RuntimeProcess, start_runtime, wait_for
from tts_runtime.engine.segmenter import split

pytestmark = pytest.mark.slow

PIECE_SECONDS = 0.5  # what the "slow" model takes per piece: long enough to watch a stream go by
SENTENCES = [f"This is sentence number {n} of a story about trains, rivers and towns." for n in range(40)]
TEXT = " ".join(SENTENCES)
WORD_SECONDS = 0.2  # what the "pieces" model takes per word, its piece


def _tiny(name: str, delay: float, factory: str = "support.tiny:factory") -> dict[str, object]:
    return {
        "name": name,
        "backend": "torch",
        "factory": factory,
        "voices": ["alto", "bass"],
        "options": {"delay_seconds": delay},
    }


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    pieces = _tiny("pieces", WORD_SECONDS, "support.tiny:pieces_factory")  # its stream joins to its clip
    models = {"models": [_tiny("tiny", 0.0), _tiny("slow", PIECE_SECONDS), pieces]}
    log: Path = tmp_path_factory.mktemp("stream") / "runtime.log"
    proc = start_runtime(log, "--device", "cpu", env={"TTS_RUNTIME_MODELS_JSON": json.dumps(models)})
    try:
        yield proc
    finally:
        proc.stop()


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def _streams(url: str, outcome: str) -> float:
    return _metric(url, "residency_speech_streams_total", model="slow", format="pcm", outcome=outcome)


def _body(text: str, model: str = "slow") -> dict[str, str]:
    return {"model": model, "input": text, "response_format": "pcm"}


def _model(url: str, name: str) -> dict[str, object]:
    report = httpx.get(f"{url}/v1/residency", timeout=10).json()
    return dict(next(m for m in report["models"] if m["name"] == name))


def test_the_openai_client_streams_audio_and_sse(runtime: RuntimeProcess) -> None:
    client = openai.OpenAI(base_url=f"{runtime.url}/v1", api_key="not-needed", max_retries=0)
    text = " ".join(SENTENCES[:6])
    started = time.perf_counter()
    arrivals: list[float] = []
    chunks: list[bytes] = []
    with client.audio.speech.with_streaming_response.create(
        model="slow", voice="alloy", input=text, response_format="wav", stream_format="audio"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        for chunk in response.iter_bytes():
            arrivals.append(time.perf_counter() - started)
            chunks.append(chunk)
    pieces = split(text)
    assert len(pieces) >= 2
    # First audio came while the rest was still being synthesized (each piece takes PIECE_SECONDS).
    assert arrivals[0] < arrivals[-1] - PIECE_SECONDS * 0.9 * (len(pieces) - 1), arrivals
    samples, rate = decode(b"".join(chunks), "wav")
    assert rate == 16000 and samples.size == 160 * sum(len(p.text) for p in pieces)

    with client.audio.speech.with_streaming_response.create(
        model="tiny", voice="alloy", input=text, response_format="pcm", stream_format="sse"
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    events = [json.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["speech.audio.delta"] * (len(events) - 1) + ["speech.audio.done"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(audio) == 2 * 160 * sum(len(p.text) for p in pieces)
    assert events[-1]["usage"]["input_tokens"] == len(text)


def test_one_lease_holds_the_model_for_the_whole_stream(runtime: RuntimeProcess) -> None:
    url = runtime.url
    text = " ".join(SENTENCES[:20])
    pieces = len(split(text))
    assert pieces >= 4
    offloads = _metric(url, "residency_transitions_total", model="slow", verb="offload", outcome="ok")
    completed = _streams(url, "completed")
    seen = []
    with (
        httpx.Client(base_url=url, timeout=60) as client,
        client.stream("POST", "/v1/audio/speech", json=_body(text)) as response,
    ):
        assert response.status_code == 200
        chunks = response.iter_bytes()
        for _ in range(2):  # the first pieces: the rest of the stream is still being synthesized
            assert next(chunks)
            model = _model(url, "slow")
            seen.append((model["state"], model["leases"]))
        body = b"".join(chunks)
    assert seen and all(s == ("gpu", 1) for s in seen), seen
    assert body
    # The stream ended: counted once its lease was closed; then offloadAfterUse ran, once for all pieces.
    wait_for(
        lambda: _streams(url, "completed") == completed + 1,
        timeout=30,
        what="the stream's end",
    )
    wait_for(lambda: _model(url, "slow")["state"] == "cpu", timeout=30, what="offload after use")
    assert _model(url, "slow")["leases"] == 0
    after = _metric(url, "residency_transitions_total", model="slow", verb="offload", outcome="ok")
    assert after == offloads + 1


def test_a_client_that_leaves_stops_the_model_and_frees_the_lease(runtime: RuntimeProcess) -> None:
    url = runtime.url
    pieces = len(split(TEXT))
    assert pieces * PIECE_SECONDS > 4.0  # the whole stream would take this long
    cancelled = _streams(url, "cancelled")
    with (
        httpx.Client(base_url=url, timeout=60) as client,
        client.stream("POST", "/v1/audio/speech", json=_body(TEXT)) as response,
    ):
        assert response.status_code == 200
        chunks = response.iter_bytes()  # kept: dropping it would close the response now
        assert next(chunks) and _model(url, "slow")["leases"] == 1
        response.close()
        left = time.perf_counter()
    # Leaving closed the connection. The stream counts as cancelled only after the worker answered that
    # it stopped and the lease was closed.
    wait_for(
        lambda: _streams(url, "cancelled") == cancelled + 1,
        timeout=30,
        interval=0.02,
        what="the stream to be cancelled",
    )
    stopped_after = time.perf_counter() - left
    assert _model(url, "slow")["leases"] == 0
    # Within about one piece (plus the server's noticing), far from the pieces still to come.
    assert stopped_after < 3 * PIECE_SECONDS, stopped_after
    # The model is free and well: the next request is served at once.
    again = httpx.post(f"{url}/v1/audio/speech", json=_body("Hello."), timeout=30)
    assert again.status_code == 200 and np.frombuffer(again.content, "<i2").size == 160 * len("Hello.")


def test_a_client_that_leaves_a_whole_file_request_stops_the_model_too(runtime: RuntimeProcess) -> None:
    url = runtime.url
    words = " ".join(f"word{n}" for n in range(40))  # 40 pieces: 8 s for the whole clip
    labels = {"format": "pcm", "model": "pieces", "status": "disconnected"}
    gone = _metric(url, "residency_request_duration_seconds_count", **labels)
    body = json.dumps({**_body(words, "pieces"), "stream": False}).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = f"POST /v1/audio/speech HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        # Loaded (on first use) and synthesizing: the request holds its model.
        wait_for(lambda: _model(url, "pieces")["leases"] == 1, timeout=60, interval=0.02, what="its lease")
    left = time.perf_counter()  # the connection is closed: nobody is left to answer
    wait_for(
        lambda: _model(url, "pieces")["leases"] == 0, timeout=30, interval=0.02, what="the model to stop"
    )
    stopped_after = time.perf_counter() - left
    assert stopped_after < 3 * WORD_SECONDS + 0.5, stopped_after  # a piece or two, not 40
    wait_for(
        lambda: _metric(url, "residency_request_duration_seconds_count", **labels) == gone + 1,
        timeout=30,
        what="the disconnect to be counted",
    )
    again = httpx.post(
        f"{url}/v1/audio/speech", json={**_body("one two", "pieces"), "stream": False}, timeout=30
    )
    assert again.status_code == 200 and np.frombuffer(again.content, "<i2").size == 160 * len("onetwo")
