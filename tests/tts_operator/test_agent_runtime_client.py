"""The agent's runtime client against a scripted HTTP server: token handling, errors, the event stream."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tts_operator.agent.runtime_client import (
    EventsUnsupported,
    RuntimeClient,
    RuntimeRefused,
    RuntimeUnavailable,
)

REPORT = {"models": [{"name": "m", "state": "cpu"}], "gpu": None}


class Script:
    """What the scripted server answers; records what it was asked."""

    def __init__(self) -> None:
        self.token = "t1"
        self.requests: list[tuple[str, str, str | None, Any]] = []
        self.events: list[str] | None = None  # raw SSE body; None: route absent (404)
        self.status: int | None = None  # force this status on every non-stream answer


@pytest.fixture()
def server() -> Iterator[tuple[Script, str]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            script.requests.append((self.command, self.path, self.headers.get("Authorization"), body))
            if self.path == "/v1/residency/events":
                if script.events is None:
                    return self._answer(404, {"detail": "Not Found"})
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write("".join(script.events).encode())
                return None
            if script.status is not None:
                return self._answer(script.status, {"detail": f"forced {script.status}"})
            if self.command != "GET" and self.headers.get("Authorization") != f"Bearer {script.token}":
                return self._answer(401, {"detail": "bad token"})
            if self.path == "/v1/residency":
                return self._answer(200, REPORT)
            return self._answer(200, {"ok": True, "path": self.path})

        do_GET = do_PUT = do_POST = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield script, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_token_is_read_lazily_and_re_read_after_a_401(server: tuple[Script, str], tmp_path: Path) -> None:
    script, url = server
    token_file = tmp_path / "admin-token"
    client = RuntimeClient(url, token_file)
    try:
        assert client.report() == REPORT  # no token file yet: reads need none
        token_file.write_text("t1\n")  # the runtime writes it at its start
        client.set_policy("a b", {"pinned": True})
        # The cached "no token" was refused once, then the file was read again and the call repeated.
        assert script.requests[-2:] == [
            ("PUT", "/v1/models/a%20b/policy", None, {"pinned": True}),
            ("PUT", "/v1/models/a%20b/policy", "Bearer t1", {"pinned": True}),
        ]
        script.token = "t2"  # the runtime restarted with a new token
        token_file.write_text("t2")
        assert client.verb("m", "offload") == {"ok": True, "path": "/v1/models/m/offload"}
        assert script.requests[-1][2] == "Bearer t2"
        script.token = "other"
        with pytest.raises(RuntimeRefused, match="--admin-token-file") as err:
            client.verb("m", "release")
        assert err.value.status == 401
    finally:
        client.close()


def test_errors_are_classified(server: tuple[Script, str]) -> None:
    script, url = server
    client = RuntimeClient(url, None)
    try:
        script.status = 409
        with pytest.raises(RuntimeRefused, match="forced 409") as refused:
            client.verb("m", "offload")
        assert refused.value.status == 409
        script.status = 503
        with pytest.raises(RuntimeUnavailable, match="503"):
            client.report()
    finally:
        client.close()
    dead = RuntimeClient("http://127.0.0.1:1", None, timeout=1.0)
    with pytest.raises(RuntimeUnavailable):
        dead.report()
    dead.close()


def test_event_stream_yields_connect_then_each_report(server: tuple[Script, str]) -> None:
    script, url = server
    second = {"models": [{"name": "m", "state": "gpu"}]}
    script.events = [
        f"data: {json.dumps(REPORT)}\n\n",
        ": keep-alive\n\n",
        "data: not json\n\n",
        f"data: {json.dumps(second)}\r\n\r\n",  # sse-starlette ends lines with CRLF
        'data: {"models": []\ndata: , "gpu": null}\n\n',  # one report over two data lines
    ]
    client = RuntimeClient(url, None)
    try:
        got = list(client.events(threading.Event()))
    finally:
        client.close()
    assert got == [None, REPORT, second, {"models": [], "gpu": None}]


def test_missing_event_stream_says_so(server: tuple[Script, str]) -> None:
    _, url = server
    client = RuntimeClient(url, None)
    try:
        with pytest.raises(EventsUnsupported):
            list(client.events(threading.Event()))
    finally:
        client.close()
