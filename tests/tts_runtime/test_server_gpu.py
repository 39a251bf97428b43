"""On a CUDA host: the HTTP report shows the GPU, and residency verbs move real GPU bytes."""

from __future__ import annotations

import json

import httpx
import pytest

from support.background import serve_in_thread
from tts_runtime.server import create_app
from tts_runtime.settings import Settings

pytestmark = pytest.mark.gpu

# 64 MiB of weights: visible in any GPU accounting.
TINY = {
    "name": "tiny",
    "backend": "torch",
    "factory": "support.tiny:factory",
    "options": {"size_bytes": 64 * 1024 * 1024},
}


def test_speech_on_the_gpu_then_release_frees_it() -> None:
    settings = Settings(
        models_json=json.dumps({"models": [TINY]}),
        device="cuda",
        offload_after_use=False,
        admin_token="gpu-test",  # whatever TTS_RUNTIME_ADMIN_TOKEN* the GPU host's environment has
    )
    auth = {"Authorization": "Bearer gpu-test"}
    with (
        serve_in_thread(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=120, headers=auth) as client,
    ):
        body = {"model": "tiny", "input": "On the GPU.", "response_format": "wav"}
        assert client.post("/v1/audio/speech", json=body).status_code == 200
        report = client.get("/v1/residency").json()
        assert report["gpu"] is not None and report["gpu"]["totalBytes"] > 0
        line = report["models"][0]
        assert line["state"] == "gpu" and line["device"].startswith("cuda")
        assert line["vramBytes"] >= 64 * 1024 * 1024
        assert "residency_gpu_bytes" in client.get("/metrics").text
        released = client.post("/v1/models/tiny/release").json()
        assert (released["state"], released["vramBytes"]) == ("unloaded", 0)
