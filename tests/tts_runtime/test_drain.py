"""SIGTERM on a real `tts-runtime serve`: the request in flight completes, then the process exits 0."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from support.procs import RuntimeProcess, start_runtime

pytestmark = pytest.mark.slow

SLOW_TINY = {
    "name": "tiny",
    "backend": "torch",
    "factory": "support.tiny:factory",
    "options": {"delay_seconds": 2.0},
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RuntimeProcess]:
    env = {"TTS_RUNTIME_MODELS_JSON": json.dumps({"models": [SLOW_TINY]}), "TTS_RUNTIME_DEVICE": "cpu"}
    proc = start_runtime(tmp_path / "runtime.log", "--drain-timeout", "20", env=env)
    try:
        yield proc
    finally:
        proc.stop()


def test_sigterm_drains_the_request_in_flight_then_exits_0(server: RuntimeProcess) -> None:
    proc, url = server, server.url
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
    proc.popen.send_signal(signal.SIGTERM)
    thread.join(60)
    response = result["response"]
    assert response.status_code == 200, response.text
    samples = np.frombuffer(response.content, "<i2")
    assert samples.size == 160 * len("Still speaking.") and np.abs(samples).max() > 0
    assert proc.popen.wait(30) == 0
    output = proc.logs()
    assert "draining" in output
