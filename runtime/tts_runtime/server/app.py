"""The app factory: routes, error handling, MCP and a lifespan that builds cheap state only (no weights)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.routing import Route

from tts_runtime.engine import Engine
from tts_runtime.server import admin, errors, events, legacy, speech
from tts_runtime.server.guards import Guards
from tts_runtime.server.mcp_lazy import Asgi, LazyMcp
from tts_runtime.server.metrics import Metrics
from tts_runtime.server.state import Admission, Drain, Runtime, SpeechPools
from tts_runtime.settings import VERSION, Settings

log = logging.getLogger("tts_runtime.server")


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """A ready-to-serve app; the app starts the engine on start-up and shuts it down (draining) on exit."""
    settings = settings or Settings()
    if engine is None:
        engine = Engine(
            settings.model_specs(),
            device=settings.device,
            gpu_memory_budget_bytes=settings.gpu_memory_budget_bytes,
        )
    metrics = Metrics(engine.report)
    runtime = Runtime(
        settings=settings,
        engine=engine,
        metrics=metrics,
        admission=Admission(settings.max_queue, metrics),
        admin_token=settings.resolve_admin_token(),
        drain=Drain(settings.drain_timeout_seconds),
        speech=SpeechPools(settings.max_queue),
    )

    def build_mcp_endpoint() -> tuple[Any, Asgi]:
        from tts_runtime.server.mcp_tools import build_mcp  # `import mcp` costs ~0.4 s: on first use only

        mcp = build_mcp(engine, runtime.admin_token)
        mcp_app = mcp.streamable_http_app(
            streamable_http_path="/mcp", stateless_http=True, json_response=True, host=settings.host
        )
        route = next(r for r in mcp_app.routes if isinstance(r, Route) and r.path == "/mcp")
        return mcp, route.handle

    lazy_mcp = LazyMcp(build_mcp_endpoint)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.drain.bind(asyncio.get_running_loop())
        engine.start()
        unsubscribe = engine.subscribe(metrics.on_transition)
        mcp_task = asyncio.create_task(lazy_mcp.run(), name="mcp")
        try:
            if settings.disable_gpu_management:
                _preload(engine)
            runtime.ready = True
            yield
            runtime.drain.begin()
            runtime.ready = False
        finally:
            mcp_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mcp_task
            runtime.drain.begin()  # a no-op after a signal; starts the budget when the app just ends
            left = runtime.drain.remaining()
            log.info("draining: up to %.1fs more for requests in flight, then every model released", left)
            # Its own thread: the shared pool may be full of requests waiting on the models it ends.
            started = time.monotonic()
            await asyncio.to_thread(engine.shutdown, left)
            runtime.speech.close()
            unsubscribe()
            log.info("every model released in %.1fs; exiting", time.monotonic() - started)

    app = FastAPI(
        title="Residency TTS runtime",
        version=VERSION,
        summary="OpenAI-compatible speech with GPU residency control",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    count_error = metrics.errors.labels
    errors.install(app, lambda kind: count_error(kind).inc())
    app.add_middleware(Guards, drain=runtime.drain, count_error=lambda kind: count_error(kind).inc())
    app.include_router(speech.router)
    app.include_router(admin.router)
    app.include_router(events.router)
    app.include_router(legacy.router)
    # The MCP endpoint's route, on this app so it shares the port, the lifespan and the 404s.
    app.router.routes.append(Route("/mcp", endpoint=lazy_mcp))

    page = resources.files("tts_runtime.server").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def status_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    return app


def _preload(engine: Engine) -> None:
    """Traditional mode: load every model in the background; readiness does not wait for it."""

    def load_all() -> None:
        for name in engine.names():
            try:
                engine.load(name)
            except Exception as err:  # the model shows `failed` in the report; the next request retries
                log.warning("preloading %s failed: %s", name, err)

    threading.Thread(target=load_all, name="preload", daemon=True).start()
