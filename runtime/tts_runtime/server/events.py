"""`GET /v1/residency/events`: Server-Sent Events carrying the full report on connect and on every change."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from tts_runtime.server.state import Runtime, RuntimeDep

router = APIRouter()


async def report_stream(runtime: Runtime, request: Request | None = None) -> AsyncIterator[str]:
    """SSE frames: the report now, again after each engine transition, a comment every keep-alive period."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def on_transition(_: Any) -> None:
        # Called from engine threads: hop onto the loop before touching the Event.
        with contextlib.suppress(RuntimeError):  # the loop closed first: the stream is over anyway
            loop.call_soon_threadsafe(changed.set)

    unsubscribe = runtime.engine.subscribe(on_transition)
    drained = asyncio.ensure_future(runtime.drain.wait())
    try:
        yield _frame(runtime)
        while not runtime.drain.active:
            waiter = asyncio.ensure_future(changed.wait())
            done, _ = await asyncio.wait(
                {waiter, drained},
                timeout=runtime.settings.events_keepalive_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            waiter.cancel()
            if drained in done:
                break
            if request is not None and await request.is_disconnected():
                break
            if waiter in done:
                changed.clear()
                yield _frame(runtime)
            else:
                yield ": keep-alive\n\n"
    finally:
        drained.cancel()
        unsubscribe()


def _frame(runtime: Runtime) -> str:
    return f"data: {json.dumps(runtime.engine.report().to_json(), separators=(',', ':'))}\n\n"


@router.get("/v1/residency/events", tags=["residency"])
async def residency_events(request: Request, runtime: RuntimeDep) -> StreamingResponse:
    return StreamingResponse(
        report_stream(runtime, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
