"""A speech request's work: on its model's own threads, dropped when its client disconnects first."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from fastapi import Request

from tts_runtime.engine.cancel import Cancel
from tts_runtime.server.state import Runtime

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready; nobody is left to answer."""


async def disconnected(request: Request) -> None:
    """Returns when the client has gone."""
    # The body has been read: the next message the server hands the app is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run_for_client(
    request: Request, runtime: Runtime, model: str, fn: Callable[..., T], *args: object
) -> T:
    """`fn(gone, *args)` on the model's speech threads; ClientGone if the client leaves first.

    `gone` (a `Cancel`) is set when the client leaves: `fn` checks it before costly steps and hands it to
    the model, which stops after the piece in progress where it can (`Lease.synthesize`). A request still
    queued for a thread is dropped from the queue and never runs."""
    gone = Cancel()
    work = asyncio.ensure_future(runtime.speech.run(model, fn, gone, *args))
    left = asyncio.ensure_future(disconnected(request))
    try:
        done, _ = await asyncio.wait({work, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
        if not work.done():
            gone.set()
            work.cancel()
    if work in done:
        return work.result()
    raise ClientGone(f"the client of a {model} request disconnected")
