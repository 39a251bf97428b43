"""The HTTP server under overload and hostile input (issue 11): a speech backlog does not starve anything
else, a disconnected client costs no synthesis, oversized bodies and cross-site writes are refused."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from support.background import serve_in_thread
from support.procs import wait_for
from tts_runtime.server import create_app
from tts_runtime.server.guards import MAX_BODY_BYTES
from tts_runtime.settings import Settings

FAULTS = "support.faults"
TINY = {"backend": "torch", "factory": "support.tiny:factory", "execution": "inline"}


def gated(gate: Path, count: Path | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {"gate": str(gate)}
    if count is not None:
        options["count_path"] = str(count)
    return {
        "name": "slow",
        "backend": "torch",
        "factory": f"{FAULTS}:gated_factory",
        "execution": "inline",
        "options": options,
    }


def settings(*models: dict[str, Any], **kw: Any) -> Settings:
    return Settings(models_json=json.dumps({"models": list(models)}), device="cpu", **kw)


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[tuple[FastAPI, str]]:
    app = create_app(request.param)
    with serve_in_thread(app) as url:
        yield app, url


def speech(model: str, text: str = "Hello.") -> dict[str, Any]:
    return {"model": model, "input": text, "response_format": "pcm"}


def metric(url: str, line_start: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- overload ----------------------------------------------------------------------------------------------
def test_a_speech_backlog_does_not_starve_control_health_metrics_or_other_models(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    app = create_app(settings(gated(gate), {"name": "fast", **TINY}, admin_token="t"))
    backlog = 60  # more than the shared thread pool (40) holds
    with serve_in_thread(app) as url:
        runtime = app.state.runtime

        async def flood() -> list[int]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                responses = await asyncio.gather(
                    *(client.post("/v1/audio/speech", json=speech("slow")) for _ in range(backlog))
                )
            return [r.status_code for r in responses]

        statuses: list[int] = []
        flooder = threading.Thread(target=lambda: statuses.extend(asyncio.run(flood())))
        flooder.start()
        try:
            wait_for(lambda: runtime.admission.depth == backlog, timeout=60, what="the backlog to queue")
            with httpx.Client(base_url=url, timeout=10) as client:
                assert client.get("/readyz").status_code == 200
                assert client.get("/metrics").status_code == 200
                put = client.put(
                    "/v1/models/slow/policy",
                    json={"idleOffloadSeconds": 30},
                    headers={"Authorization": "Bearer t"},
                )
                assert put.status_code == 200, put.text
                assert client.post("/v1/audio/speech", json=speech("fast")).status_code == 200
            assert runtime.admission.depth == backlog  # all of it answered while the backlog waited
        finally:
            gate.touch()
            flooder.join(120)
    assert statuses == [200] * backlog


def test_a_client_that_leaves_costs_no_synthesis_and_is_counted_disconnected(tmp_path: Path) -> None:
    load_gate, count = tmp_path / "load-gate", tmp_path / "count"
    (tmp_path / "gate").touch()  # synthesis itself is not held back
    model = gated(tmp_path / "gate", count)
    model["options"]["load_gate"] = str(load_gate)  # the load is: the request waits for its model
    model["policy"] = {"offloadAfterUse": False}
    app = create_app(settings(model))
    with serve_in_thread(app) as url:
        # The client gives up while its model loads, and disconnects.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/audio/speech", json=speech("slow"), timeout=httpx.Timeout(10, read=1.0))
        count_of = 'residency_request_duration_seconds_count{format="pcm",model="slow",status="%s"}'
        wait_for(lambda: metric(url, count_of % "disconnected") == 1, what="the disconnect to be counted")
        load_gate.touch()

        def lease_ended() -> bool:
            m = httpx.get(f"{url}/v1/models/slow", timeout=10).json()["residency"]
            return m["state"] == "gpu" and m["leases"] == 0 and m["lastUsed"] is not None

        wait_for(lease_ended, timeout=60, what="the abandoned request to end")
        assert not count.exists()  # loaded, but nothing synthesized for nobody
        assert metric(url, count_of % "ok") == 0
        assert httpx.post(f"{url}/v1/audio/speech", json=speech("slow"), timeout=30).status_code == 200
        assert count.read_text() == "."


# -- limits ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("served", [settings({"name": "tiny", **TINY})], indirect=True)
def test_an_oversized_body_is_refused_with_413_before_it_is_read(served: tuple[FastAPI, str]) -> None:
    _, url = served
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # 500 MB announced, none sent: the answer must come without waiting for the body.
        sock.sendall(
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 524288000\r\n\r\n"
        )
        head = sock.recv(65536).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head
    assert "limit" in head

    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b" " * (MAX_BODY_BYTES // 2)

    r = httpx.post(
        f"{url}/v1/audio/speech", content=chunks(), headers={"Content-Type": "application/json"}, timeout=30
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert httpx.post(f"{url}/v1/audio/speech", json=speech("tiny"), timeout=30).status_code == 200


# -- cross-site writes --------------------------------------------------------------------------------
CROSS = [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site", "Origin": "http://other.testserver"},
]


@pytest.mark.parametrize("headers", CROSS)
def test_cross_origin_browsers_cannot_change_residency_even_without_a_token(headers: dict[str, str]) -> None:
    with TestClient(create_app(settings({"name": "tiny", **TINY}))) as client:
        for method, path, kw in (
            ("POST", "/v1/models/tiny/load", {}),
            ("PUT", "/v1/models/tiny/policy", {"json": {"pinned": True}}),
            ("POST", "/gpu/timeout", {"data": {"timeout": "1"}}),  # the form post the issue showed
            ("POST", "/gpu/release", {}),
        ):
            r = client.request(method, path, headers=headers, **kw)
            assert r.status_code == 403, (path, r.text)
            assert r.json()["error"]["code"] == "cross_origin"
        report = client.get("/v1/models/tiny").json()["residency"]
        assert report["state"] == "unloaded" and report["policy"]["pinned"] is False


def test_same_origin_pages_and_non_browser_clients_still_write() -> None:
    with TestClient(create_app(settings({"name": "tiny", **TINY}))) as client:
        same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
        assert client.post("/v1/models/tiny/load", headers=same).status_code == 200
        assert client.put("/v1/models/tiny/policy", json={"pinned": True}, headers=same).status_code == 200
        # The legacy form post keeps working for curl (-F) and for the server's own page.
        assert client.post("/gpu/timeout", data={"timeout": "7"}).json()["timeout"] == 7
        assert client.post("/gpu/timeout", files={"timeout": (None, "8")}, headers=same).status_code == 200
        assert client.get("/v1/models/tiny/policy").json()["idleOffloadSeconds"] == 8


def test_write_bodies_must_be_json() -> None:
    with TestClient(create_app(settings({"name": "tiny", **TINY}))) as client:
        body = json.dumps({"pinned": True})
        for headers in ({"Content-Type": "text/plain"}, {}):  # what a no-cors fetch can send
            r = client.put("/v1/models/tiny/policy", content=body, headers=headers)
            assert r.status_code == 415, r.text
            assert "application/json" in r.json()["error"]["message"]
        assert client.get("/v1/models/tiny/policy").json()["pinned"] is False


# -- readiness ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_readiness_turns_503_while_a_worker_is_stopped() -> None:
    import os
    import signal

    spec = {
        "name": "tiny",
        "backend": "torch",
        "factory": "support.tiny:factory",
        "policy": {"offloadAfterUse": False},
    }
    with TestClient(create_app(settings(spec))) as client:
        assert client.post("/v1/models/tiny/load").status_code == 200
        assert client.get("/readyz").status_code == 200
        engine = client.app.state.runtime.engine  # type: ignore[attr-defined]
        [pid] = engine.pids()[1:]
        os.kill(pid, signal.SIGSTOP)
        try:
            r = wait_for(lambda: (r := client.get("/readyz")).status_code == 503 and r, what="readiness 503")
            assert "tiny" in r.json()["models"] and "stopped" in r.json()["models"]["tiny"]
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: client.get("/readyz").status_code == 200, what="ready again")
