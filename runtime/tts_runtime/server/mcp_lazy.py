"""The `/mcp` endpoint, built on its first request, so `import mcp` stays off the start-up path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tts_runtime.server")

Asgi = Callable[..., Any]


class LazyMcp:
    """An ASGI endpoint that builds the MCP server when first asked. `run()` is a task the app's lifespan
    owns: it builds the server and runs its session manager (which must live in one task) until cancelled."""

    def __init__(self, build: Callable[[], tuple[Any, Asgi]]) -> None:
        self._build = build  # -> (the MCP server, the ASGI handler of its /mcp route)
        self._wanted = asyncio.Event()
        self._ready = asyncio.Event()
        self._handler: Asgi | None = None
        self._error: BaseException | None = None

    async def run(self) -> None:
        await self._wanted.wait()
        try:
            server, handler = await asyncio.to_thread(self._build)
        except Exception as e:  # every /mcp request answers 500 with this; the rest of the app serves on
            log.exception("building the MCP endpoint failed")
            self._error = e
            self._ready.set()
            return
        async with server.session_manager.run():
            self._handler = handler
            self._ready.set()
            await asyncio.Event().wait()  # until the lifespan cancels this task at shutdown

    async def __call__(self, scope: dict[str, Any], receive: Asgi, send: Asgi) -> None:
        self._wanted.set()
        await self._ready.wait()
        if self._handler is None:
            body = f"the MCP endpoint is unavailable: {self._error}".encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self._handler(scope, receive, send)
