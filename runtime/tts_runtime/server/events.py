"""`GET /v1/residency/events`: Server-Sent Events carrying the full report on connect and on every change."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from sse_starlette import EventSourceResponse, ServerSentEvent

from tts_runtime.server.state import Runtime, RuntimeDep

router = APIRouter()


async def report_stream(runtime: Runtime) -> AsyncIterator[ServerSentEvent]:
    """The report now, then again after each engine transition; ends when the server drains.

    Keep-alive comments and the client's disconnect are sse-starlette's (it cancels this generator)."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def on_transition(_: Any) -> None:
        # Called from engine threads: hop onto the loop before touching the Event.
        with contextlib.suppress(RuntimeError):  # the loop closed first: the stream is over anyway
            loop.call_soon_threadsafe(changed.set)

    unsubscribe = runtime.engine.subscribe(on_transition)
    drained = asyncio.ensure_future(runtime.drain.wait())
    try:
        yield _report(runtime)
        while not runtime.drain.active:
            waiter = asyncio.ensure_future(changed.wait())
            done, _ = await asyncio.wait({waiter, drained}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if drained in done:
                break
            changed.clear()
            yield _report(runtime)
    finally:
        drained.cancel()
        unsubscribe()


def _report(runtime: Runtime) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(runtime.engine.report().to_json(), separators=(",", ":")))


@router.get("/v1/residency/events", tags=["residency"])
async def residency_events(runtime: RuntimeDep) -> EventSourceResponse:
    return EventSourceResponse(
        report_stream(runtime),
        ping=runtime.settings.events_keepalive_seconds,
        ping_message_factory=lambda: ServerSentEvent(comment="keep-alive"),
    )
