"""ASGI guards in front of every route: body size, cross-origin writes, and the end of the drain budget."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tts_runtime.server.state import Drain

MAX_BODY_BYTES = 1 << 20  # a speech body is at most ~4096 characters of JSON; MCP calls are smaller still
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The original project's panels post a form here (`curl -F timeout=300`); every other body is JSON.
FORM_PATHS = frozenset({"/gpu/timeout"})
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


async def _answer(send: Send, status: int, message: str, code: str) -> None:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 503:
        raw.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def cross_origin(scope: Scope) -> str | None:
    """Why a state-changing request comes from another site's page, or None (same origin, or no browser).

    Browsers say where a request comes from (Sec-Fetch-Site; Origin on every cross-origin POST); curl,
    SDKs and the agent send neither. With no admin token (the local default) this is what keeps any page
    the user opens from loading, offloading or re-timing models through the user's browser."""
    site = _header(scope, b"sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site!r}"
    origin = _header(scope, b"origin")
    if origin is None:
        return None
    host = (_header(scope, b"host") or "").lower()
    if origin == "null" or urlsplit(origin).netloc.lower() != host:
        return f"Origin {origin!r} is not this server ({host})"
    return None


def _json_type(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class Guards:
    """Refuse early what no route should see; answer 503 for requests the drain budget cut short."""

    def __init__(self, app: ASGIApp, drain: Drain, count_error: Callable[[str], Any]) -> None:
        self.app = app
        self.drain = drain
        self.count_error = count_error

    async def refuse(self, send: Send, status: int, message: str, code: str) -> None:
        self.count_error(code)
        await _answer(send, status, message, code)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            await self.refuse(
                send,
                413,
                f"the request body is {length} bytes; the limit is {MAX_BODY_BYTES}",
                "body_too_large",
            )
            return
        if method not in SAFE_METHODS:
            why = cross_origin(scope)
            if why is not None:
                await self.refuse(
                    send,
                    403,
                    f"cross-origin request refused ({why}): change residency from this server's own page, "
                    "or from a client that is not a browser",
                    "cross_origin",
                )
                return
            chunked = _header(scope, b"transfer-encoding") is not None
            has_body = (length is not None and length != "0") or chunked
            content_type = _header(scope, b"content-type") or ""
            form_ok = scope["path"] in FORM_PATHS and content_type.lower().startswith(FORM_TYPES)
            if has_body and not _json_type(content_type) and not form_ok:
                await self.refuse(
                    send,
                    415,
                    f"the body must be JSON: send it with 'Content-Type: application/json' "
                    f"(got {content_type or 'no Content-Type'!r})",
                    "unsupported_media_type",
                )
                return
        await self._serve(scope, _limited(receive), send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            # The server cancels what is still running when the drain budget ends: say so (503, retry on
            # another replica), not the 500 the server would send for a cancelled request.
            if not self.drain.active or started:
                raise
            await self.refuse(
                send, 503, "the runtime shut down before this request finished; retry it", "shutting_down"
            )
        except StarletteHTTPException as e:
            if e.status_code != 413 or started:
                raise
            await self.refuse(send, 413, str(e.detail), "body_too_large")


def _limited(receive: Receive) -> Receive:
    """`receive` that stops a body without Content-Length (chunked) at MAX_BODY_BYTES."""
    seen = 0

    async def limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:
                raise StarletteHTTPException(413, f"the request body is over the limit of {MAX_BODY_BYTES} B")
        return message

    return limited
