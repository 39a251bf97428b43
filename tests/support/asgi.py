"""An app from `create_app(settings)` served in-process, with its lifespan, behind an httpx client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from tts_runtime.server import create_app
from tts_runtime.settings import Settings


@asynccontextmanager
async def running(
    settings: Settings, client_timeout: float = 30
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://runtime", timeout=client_timeout) as client,
    ):
        yield app, client
