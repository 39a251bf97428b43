"""Per-app state and the named FastAPI dependencies routes use to reach it."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from tts_runtime.engine import Engine
from tts_runtime.server.errors import ApiError
from tts_runtime.server.metrics import Metrics
from tts_runtime.settings import Settings


class Drain:
    """Set once the process was asked to stop: /readyz turns 503 and event streams end."""

    def __init__(self) -> None:
        self._active = False
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()
        if self._active:
            self._event.set()

    def begin(self) -> None:
        """Safe from a signal handler or any thread."""
        self._active = True
        loop, event = self._loop, self._event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    @property
    def active(self) -> bool:
        return self._active

    async def wait(self) -> None:
        if self._event is None:
            self.bind(asyncio.get_running_loop())
        assert self._event is not None
        await self._event.wait()


class Admission:
    """Bounded admission of speech requests: beyond `limit` (running + waiting) answer 503 at once."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.depth = 0
        self._metrics = metrics

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        # Only the event loop thread touches `depth`, so no lock is needed.
        if self.depth >= self.limit:
            raise ApiError(
                503,
                f"the server is at its limit of {self.limit} queued speech requests; retry shortly",
                code="queue_full",
                retry_after=1.0,
            )
        self.depth += 1
        self._metrics.queue_depth.set(self.depth)
        try:
            yield
        finally:
            self.depth -= 1
            self._metrics.queue_depth.set(self.depth)


@dataclass
class Runtime:
    """Everything one app serves from; built cheaply in `create_app` (no weights are touched)."""

    settings: Settings
    engine: Engine
    metrics: Metrics
    admission: Admission
    admin_token: str | None
    drain: Drain = field(default_factory=Drain)
    ready: bool = False


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_engine(request: Request) -> Engine:
    return get_runtime(request).engine


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
EngineDep = Annotated[Engine, Depends(get_engine)]


def token_matches(expected: str | None, authorization: str | None) -> bool:
    """Constant-time check of an `Authorization: Bearer <token>` header; no token configured → open."""
    if expected is None:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def require_admin(request: Request) -> None:
    runtime = get_runtime(request)
    if not token_matches(runtime.admin_token, request.headers.get("authorization")):
        raise ApiError(
            401,
            "this admin route needs 'Authorization: Bearer <token>' with the token of --admin-token "
            "or --admin-token-file",
            code="unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )


AdminDep = Depends(require_admin)
