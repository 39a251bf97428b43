"""SIGTERM on a real `tts-runtime serve`: the request in flight completes, then the process exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tts_runtime.server.background import free_port

pytestmark = pytest.mark.slow

SLOW_TINY = {
    "name": "tiny",
    "backend": "torch",
    "factory": "tts_runtime.testing.tiny:factory",
    "options": {"delay_seconds": 2.0},
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_RUNTIME_")}
    return {**env, **extra}


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    env = _env(TTS_RUNTIME_MODELS_JSON=json.dumps({"models": [SLOW_TINY]}), TTS_RUNTIME_DEVICE="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tts_runtime", "serve", "--port", str(port), "--drain-timeout", "20"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the runtime did not become ready in 60s"
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def test_sigterm_drains_the_request_in_flight_then_exits_0(server: tuple[subprocess.Popen[str], str]) -> None:
    proc, url = server
    result: dict[str, httpx.Response] = {}

    def slow_request() -> None:
        body = {"model": "tiny", "input": "Still speaking.", "response_format": "pcm"}
        result["response"] = httpx.post(f"{url}/v1/audio/speech", json=body, timeout=60)

    thread = threading.Thread(target=slow_request)
    thread.start()
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/v1/residency", timeout=5).json()["models"][0]["leases"] == 0:
        assert time.monotonic() < deadline and thread.is_alive(), "the request never held its lease"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    thread.join(60)
    response = result["response"]
    assert response.status_code == 200, response.text
    samples = np.frombuffer(response.content, "<i2")
    assert samples.size == 160 * len("Still speaking.") and np.abs(samples).max() > 0
    assert proc.wait(30) == 0
    output = proc.stdout.read() if proc.stdout else ""
    assert "draining" in output
