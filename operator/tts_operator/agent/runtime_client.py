"""HTTP client of the local runtime: residency report, change stream, policy and admin verbs."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import SSEError, connect_sse

log = logging.getLogger(__name__)


class RuntimeUnavailable(Exception):
    """The runtime did not answer (down, restarting, overloaded): retry later."""


class RuntimeRefused(Exception):
    """The runtime answered with a client error: retrying the same call will not help by itself."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class EventsUnsupported(Exception):
    """The runtime has no `/v1/residency/events` stream: poll instead."""


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        for key in ("detail", "error", "message"):
            value = body.get(key)
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return str(value["message"])  # the runtime's OpenAI-style {"error": {"message": ...}}
            if value is not None:
                return value if isinstance(value, str) else json.dumps(value)
    return json.dumps(body)[:300]


class RuntimeClient:
    """Talks to one runtime over localhost; reads the admin token lazily (the runtime writes it at start)."""

    def __init__(self, base_url: str, token_file: Path | None, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_file = token_file
        self._token: str | None = None
        self._token_loaded = False
        # trust_env=False: a cluster-wide HTTP(S)_PROXY must never capture localhost traffic.
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, trust_env=False)
        # Changes may be minutes apart: a long read timeout, and the loop's periodic resync covers any gap.
        self._stream_timeout = httpx.Timeout(timeout, read=60.0)

    def close(self) -> None:
        self._http.close()

    def _load_token(self) -> str | None:
        self._token_loaded = True
        self._token = None
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("cannot read the admin token file %s: %s", self.token_file, err)
            return None
        self._token = token or None
        return self._token

    def _headers(self) -> dict[str, str]:
        token = self._token if self._token_loaded else self._load_token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        for attempt in (1, 2):
            try:
                response = self._http.request(method, path, json=body, headers=self._headers())
            except httpx.HTTPError as err:
                raise RuntimeUnavailable(f"{method} {self.base_url}{path}: {err!r}") from err
            if response.status_code == 401 and attempt == 1:
                # The runtime may have (re)generated its token since we read it: read it again once.
                self._load_token()
                continue
            if response.status_code == 401:
                raise RuntimeRefused(
                    401,
                    f"admin token rejected by {method} {path}: check that --admin-token-file "
                    f"({self.token_file}) is the file the runtime writes (TTS_RUNTIME_ADMIN_TOKEN_FILE)",
                )
            if response.status_code >= 500:
                raise RuntimeUnavailable(f"{method} {path}: HTTP {response.status_code}: {_detail(response)}")
            if response.status_code >= 400:
                raise RuntimeRefused(response.status_code, f"{method} {path}: {_detail(response)}")
            try:
                return response.json()
            except ValueError as err:
                raise RuntimeUnavailable(f"{method} {path}: answer is not JSON") from err
        raise AssertionError("unreachable")  # pragma: no cover

    def report(self) -> dict[str, Any]:
        """`GET /v1/residency`."""
        report = self._request("GET", "/v1/residency")
        if not isinstance(report, dict) or not isinstance(report.get("models"), list):
            raise RuntimeUnavailable("GET /v1/residency: answer is not a residency report")
        return report

    def set_policy(self, model: str, body: dict[str, Any]) -> Any:
        """`PUT /v1/models/{model}/policy` (camelCase body; answers the new policy)."""
        return self._request("PUT", f"/v1/models/{quote(model, safe='')}/policy", body)

    def verb(self, model: str, verb: str) -> Any:
        """`POST /v1/models/{model}/{verb}`: load, offload, restore or release."""
        return self._request("POST", f"/v1/models/{quote(model, safe='')}/{verb}")

    def events(self, stop: threading.Event) -> Iterator[dict[str, Any] | None]:
        """Follow `GET /v1/residency/events`: yields None once connected, then each report it streams.

        Ends when the runtime closes the stream (e.g. it restarts); raises EventsUnsupported when the
        runtime has no such route, RuntimeUnavailable when it cannot be reached. httpx-sse parses the
        stream (keep-alive comments, CRLF or LF lines, multi-line data).
        """
        try:
            with (
                httpx.Client(base_url=self.base_url, timeout=self._stream_timeout, trust_env=False) as client,
                connect_sse(client, "GET", "/v1/residency/events") as source,
            ):
                status = source.response.status_code
                if status in (404, 405):
                    raise EventsUnsupported(f"GET /v1/residency/events: HTTP {status}")
                if status != 200:
                    raise RuntimeUnavailable(f"GET /v1/residency/events: HTTP {status}")
                yield None
                for event in source.iter_sse():
                    if stop.is_set():
                        return
                    report = _parse_event(event.data)
                    if report is not None:
                        yield report
        except (httpx.HTTPError, SSEError) as err:
            raise RuntimeUnavailable(f"GET /v1/residency/events: {err!r}") from err


def _parse_event(data: str) -> dict[str, Any] | None:
    try:
        report = json.loads(data)
    except ValueError:
        log.warning("ignoring a residency event that is not JSON: %.100s", data)
        return None
    if isinstance(report, dict) and isinstance(report.get("models"), list):
        return report
    return None
