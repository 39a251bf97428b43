"""Per-app state and the named FastAPI dependencies routes use to reach it."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from tts_runtime.engine import Engine
from tts_runtime.server.errors import ApiError
from tts_runtime.server.metrics import Metrics
from tts_runtime.settings import Settings

T = TypeVar("T")


class Drain:
    """Set once the process was asked to stop: /readyz turns 503 and event streams end. One budget of
    `seconds` runs from that moment: requests in flight, then the engine's release, all within it."""

    def __init__(self, seconds: float = 30.0) -> None:
        self.seconds = seconds
        self._active = False
        self._deadline: float | None = None
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()
        if self._active:
            self._event.set()

    def begin(self) -> None:
        """Safe from a signal handler or any thread."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.seconds
        self._active = True
        loop, event = self._loop, self._event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    @property
    def active(self) -> bool:
        return self._active

    def remaining(self) -> float:
        """Seconds left of the drain budget (the whole budget before the drain began)."""
        if self._deadline is None:
            return self.seconds
        return max(0.0, self._deadline - time.monotonic())

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


class SpeechPools:
    """Threads for speech, one pool per model: a backlog on one model (its requests block waiting for it)
    never takes the threads of another model, nor those of control routes, health and metrics. Each pool
    can hold every admitted request (`--max-queue`), so all of them reach the worker, which batches them."""

    def __init__(self, per_model: int) -> None:
        self._per_model = per_model
        self._pools: dict[str, ThreadPoolExecutor] = {}

    async def run(self, model: str, fn: Callable[..., T], *args: object) -> T:
        pool = self._pools.get(model)
        if pool is None:
            pool = ThreadPoolExecutor(self._per_model, thread_name_prefix=f"speech-{model}")
            self._pools[model] = pool
        # Awaiting the future is cancellable at once (the thread finishes on its own), unlike anyio's pool.
        return await asyncio.wrap_future(pool.submit(fn, *args))

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Runtime:
    """Everything one app serves from; built cheaply in `create_app` (no weights are touched)."""

    settings: Settings
    engine: Engine
    metrics: Metrics
    admission: Admission
    admin_token: str | None
    drain: Drain = field(default_factory=Drain)
    speech: SpeechPools = field(default_factory=lambda: SpeechPools(64))
    ready: bool = False


# Async on purpose: a sync dependency runs in the shared thread pool, so a speech backlog would delay
# every route, /readyz included, behind it.
async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_engine(request: Request) -> Engine:
    return (await get_runtime(request)).engine


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


async def require_admin(request: Request) -> None:
    runtime = await get_runtime(request)
    authorization = request.headers.get("authorization")
    if token_matches(runtime.admin_token, authorization):
        return
    if authorization:  # a wrong token is not a missing one: say which, so the user fixes the right thing
        message = (
            "the admin token sent is wrong: send 'Authorization: Bearer <token>' with the token of "
            "--admin-token or --admin-token-file"
        )
        code = "invalid_token"
    else:
        message = (
            "this admin route needs 'Authorization: Bearer <token>' with the token of --admin-token "
            "or --admin-token-file"
        )
        code = "unauthorized"
    raise ApiError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})


AdminDep = Depends(require_admin)
