"""The engine's own process never imports torch (so it can never create a CUDA context): `unloaded` is
really 0 GPU bytes for the pod, and the workers alone hold CUDA. Checked in a fresh interpreter through a
full cycle of every verb, for a torch model in both cpu modes, hibari, and the HTTP server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from fastapi.testclient import TestClient
    from tts_runtime.engine import Engine
    from tts_contract import ModelSpec
    from tts_runtime.server import create_app
    from tts_runtime.settings import Settings

    keep = {"offloadAfterUse": False}
    tiny = {"backend": "torch", "factory": "support.tiny:factory", "policy": keep}
    specs = [
        ModelSpec(name="hibari", policy=keep),
        ModelSpec(name="keep", cpu_mode="keep-worker", **tiny),
        ModelSpec(name="exit", cpu_mode="exit-worker", **tiny),
    ]
    e = Engine(specs, device="auto")  # auto: NVML decides; the engine itself must not ask CUDA
    for name in e.names():
        with e.lease(name) as lease:
            assert lease.synthesize("Hello.").samples.size > 0
        e.offload(name)
        e.restore(name)
        e.report()
        e.release(name)
    e.shutdown(drain_timeout=5)
    models = json.dumps({"models": [{"name": "tiny", **tiny}]})
    with TestClient(create_app(Settings(models_json=models))) as client:
        r = client.post("/v1/audio/speech", json={"model": "tiny", "input": "Hi.", "response_format": "wav"})
        assert r.status_code == 200, r.text
        assert client.get("/v1/residency").status_code == 200
    print(json.dumps(sorted(m for m in ("torch", "onnxruntime") if m in sys.modules)))
    """
)


def test_the_engine_process_never_imports_torch_or_onnxruntime() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TTS_RUNTIME_MODELS_JSON"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180, env=env, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
