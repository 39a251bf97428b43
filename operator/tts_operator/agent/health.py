"""The agent's probes: `/healthz` (alive, with its view as JSON) and `/readyz` (policy synced, runtime up)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


class HealthServer:
    """Serves `/healthz` from `snapshot()` and `/readyz` from `ready()` on a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        snapshot: Callable[[], dict[str, Any]],
        ready: Callable[[], tuple[bool, str]],
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    outer._send(self, 200, {"status": "ok", **snapshot()})
                elif path == "/readyz":
                    ok, why = ready()
                    outer._send(self, 200 if ok else 503, {"ready": ok, "reason": why})
                else:
                    outer._send(self, 404, {"error": f"no route {path}: use /healthz or /readyz"})

            def log_message(self, format: str, *args: Any) -> None:
                # Probes hit these routes every few seconds: keep them out of the log.
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
