"""`tts-runtime serve` as a user runs it: no configuration serves real hibari speech; bad flags exit 2."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from support.procs import runtime_env, start_runtime

pytestmark = pytest.mark.slow


def test_default_serve_speaks_real_english_with_hibari(tmp_path: Path) -> None:
    proc = start_runtime(tmp_path / "runtime.log")
    port, url = proc.port, proc.url
    try:
        models = httpx.get(f"{url}/v1/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["hibari"]
        assert models["data"][0]["residency"]["state"] == "unloaded"  # no weights at start-up
        body = {
            "model": "tts-1",
            "voice": "alloy",
            "input": "Hello from Residency.",
            "response_format": "wav",
        }
        response = httpx.post(f"{url}/v1/audio/speech", json=body, timeout=120)
        assert response.status_code == 200, response.text
        assert response.content[:4] == b"RIFF" and response.content[8:12] == b"WAVE"
        samples, rate = sf.read(io.BytesIO(response.content), dtype="float32")
        assert rate == 24000
        assert samples.size > 0.5 * rate  # a sentence, not a click
        assert float(np.sqrt(np.mean(samples**2))) > 0.01  # speech, not silence
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(60) == 0
        startup = proc.logs()
        assert f"http://127.0.0.1:{port}" in startup and "models=hibari" in startup
        assert "gpu-management=on" in startup and "device=auto" in startup
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["serve", "--port", "eighty"], "--port"),
        (["serve", "--device", "tpu"], "--device"),
        (["serve", "--model", "x=not a factory"], "factory"),
        (["serve", "--bogus"], "--bogus"),
    ],
)
def test_bad_flags_stop_the_start_with_exit_2(argv: list[str], needle: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tts_runtime", *argv],
        env=runtime_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert needle in done.stderr and "Traceback" not in done.stderr
