"""Stopping a real `tts-runtime serve` (issue 11): SIGTERM while a model loads, one drain budget end to
end, and a SIGTERM sent to the whole process group."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from support.procs import RuntimeProcess, start_runtime, wait_for
from tts_runtime.engine.lifecycle import process_state

pytestmark = pytest.mark.slow
FAULTS = "support.faults"


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (the runtime's workers)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def workers(pid: int) -> list[int]:
    def cmdline(p: int) -> str:
        try:
            return Path(f"/proc/{p}/cmdline").read_text()
        except OSError:
            return ""

    return [p for p in children(pid) if "spawn_main" in cmdline(p)]


def dead(pid: int) -> bool:
    return process_state(pid) in (None, "Z", "X")


def runtime_with(tmp_path: Path, model: dict[str, object], drain: float) -> RuntimeProcess:
    env = {"TTS_RUNTIME_MODELS_JSON": json.dumps({"models": [model]}), "TTS_RUNTIME_DEVICE": "cpu"}
    return start_runtime(tmp_path / "runtime.log", "--drain-timeout", str(drain), env=env)


def state(url: str) -> dict[str, object]:
    return httpx.get(f"{url}/v1/residency", timeout=5).json()["models"][0]  # type: ignore[no-any-return]


def test_sigterm_while_a_model_loads_ends_every_worker_within_the_drain(tmp_path: Path) -> None:
    drain = 2.0
    model = {"name": "tiny", "backend": "torch", "factory": f"{FAULTS}:hanging_factory"}
    proc = runtime_with(tmp_path, model, drain)
    try:
        url = proc.url
        body = {"model": "tiny", "input": "x"}
        client = threading.Thread(
            target=lambda: httpx.post(f"{url}/v1/audio/speech", json=body, timeout=60), daemon=True
        )
        client.start()
        wait_for(lambda: state(url)["state"] == "loading", timeout=60, what="the load to start")
        [worker] = wait_for(lambda: workers(proc.popen.pid), what="the loading worker")
        t0 = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(drain + 15) == 0
        assert time.monotonic() - t0 < drain + 15
        assert dead(worker)
    finally:
        proc.stop()


def test_one_drain_budget_the_request_cut_short_gets_503(tmp_path: Path) -> None:
    drain = 6.0
    model = {
        "name": "tiny",
        "backend": "torch",
        "factory": "support.tiny:factory",
        "options": {"delay_seconds": 60.0},
    }
    proc = runtime_with(tmp_path, model, drain)
    try:
        url = proc.url
        result: dict[str, httpx.Response] = {}

        def request() -> None:
            body = {"model": "tiny", "input": "Too long.", "response_format": "pcm"}
            result["r"] = httpx.post(f"{url}/v1/audio/speech", json=body, timeout=60)

        t = threading.Thread(target=request)
        t.start()
        wait_for(lambda: state(url)["leases"] == 1, timeout=60, what="the request to hold its lease")
        t0 = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(drain + 10) == 0
        # One budget: the drain, then killing and reaping the worker and the interpreter's exit (seconds
        # on a loaded 2-core runner); it used to be the drain twice plus 5 s (17 s here) and more.
        assert time.monotonic() - t0 < drain + 8, proc.logs()
        t.join(10)
        r = result["r"]
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "shutting_down" and "Retry-After" in r.headers
    finally:
        proc.stop()


def test_sigterm_to_the_process_group_still_drains_the_request(tmp_path: Path) -> None:
    model = {
        "name": "tiny",
        "backend": "torch",
        "factory": "support.tiny:factory",
        "options": {"delay_seconds": 2.0},
    }
    proc = runtime_with(tmp_path, model, 20.0)
    try:
        url = proc.url
        result: dict[str, httpx.Response] = {}

        def request() -> None:
            body = {"model": "tiny", "input": "Still speaking.", "response_format": "pcm"}
            result["r"] = httpx.post(f"{url}/v1/audio/speech", json=body, timeout=60)

        t = threading.Thread(target=request)
        t.start()
        wait_for(lambda: state(url)["leases"] == 1, timeout=60, what="the request to hold its lease")
        os.killpg(proc.popen.pid, signal.SIGTERM)  # as a container runtime does
        t.join(60)
        assert result["r"].status_code == 200, result["r"].text
        assert proc.popen.wait(30) == 0
    finally:
        proc.stop()
