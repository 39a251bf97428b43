"""The original project's routes, kept as aliases so its scripts and panels keep working."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from tts_contract import ModelReport, PolicyPatch, State
from tts_runtime.engine.errors import InvalidTransitionError
from tts_runtime.server.errors import ApiError
from tts_runtime.server.state import AdminDep, EngineDep

router = APIRouter(tags=["legacy"])

_GIB = 1024**3


def _legacy_line(model: ModelReport) -> dict[str, Any]:
    """The seed's per-model status fields, next to the new vocabulary."""
    idle = model.idle_seconds
    timeout = model.policy.idle_offload_seconds
    on_gpu = model.state in (State.GPU, State.RESTORING, State.LOADING)
    return {
        "state": model.state.value,
        "location": {"gpu": "GPU", "cpu": "CPU"}.get(model.state.value, model.state.value),
        "loaded": model.state in (State.GPU, State.CPU),
        "on_gpu": on_gpu,
        "auto_unload": not model.policy.pinned,
        "offload_after_use": model.policy.offload_after_use,
        "idle_timeout": timeout,
        "idle_time": idle,
        "time_until_unload": max(0.0, timeout - idle) if idle is not None and on_gpu else None,
        "gpu_memory_allocated_gb": round(model.vram_bytes / _GIB, 3),
        "variant": model.variant,
    }


@router.get("/gpu/status")
async def gpu_status(engine: EngineDep) -> dict[str, Any]:
    report = engine.report()
    return {
        "models": {m.name: _legacy_line(m) for m in report.models},
        "residency": report.to_json(),
    }


@router.get("/api/v1/models/status")
async def models_status(engine: EngineDep) -> dict[str, Any]:
    return {m.name: _legacy_line(m) for m in engine.report().models}


def _offload_all(engine: Any) -> list[str]:
    done = []
    for model in engine.report().models:
        if model.state == State.GPU and model.leases == 0:
            try:
                engine.offload(model.name)
            except InvalidTransitionError:
                continue  # a request took it meanwhile, or it changed state: nothing to free now
            done.append(model.name)
    return done


def _release_all(engine: Any, names: list[str]) -> list[str]:
    for name in names:
        engine.release(name)
    return names


@router.post("/gpu/offload", dependencies=[AdminDep])
async def gpu_offload(engine: EngineDep) -> dict[str, Any]:
    offloaded = await run_in_threadpool(_offload_all, engine)
    return {"status": "offloaded", "models": offloaded}


@router.post("/gpu/release", dependencies=[AdminDep])
async def gpu_release(engine: EngineDep) -> dict[str, Any]:
    released = await run_in_threadpool(_release_all, engine, engine.names())
    return {"status": "released", "models": released}


async def _timeout_value(request: Request) -> float:
    """`timeout` from a form (`-F timeout=300`), a JSON body, or the query string."""
    raw: Any = request.query_params.get("timeout")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raw = (await request.form()).get("timeout", raw)
    elif content_type.startswith("application/json"):
        try:
            body = json.loads(await request.body() or b"null")
        except json.JSONDecodeError as err:
            raise ApiError(400, f"the body is not valid JSON: {err.msg}", code="invalid_request") from err
        if isinstance(body, dict):
            raw = body.get("timeout", raw)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ApiError(
            400,
            "send 'timeout' in seconds (>= 0) as a form field, JSON {\"timeout\": N} or ?timeout=N",
            code="invalid_request",
            param="timeout",
        ) from None
    if not value >= 0 or value == float("inf"):
        raise ApiError(
            400,
            f"timeout {raw!r} must be a finite number of seconds >= 0",
            code="invalid_request",
            param="timeout",
        )
    return value


@router.post("/gpu/timeout", dependencies=[AdminDep])
async def gpu_timeout(request: Request, engine: EngineDep) -> dict[str, Any]:
    """The seed's idle timeout is `idleOffloadSeconds`, set for every model."""
    seconds = await _timeout_value(request)
    patch = PolicyPatch.model_validate({"idle_offload_seconds": seconds})
    await run_in_threadpool(engine.set_policies, engine.names(), patch)
    return {"status": "updated", "timeout": seconds, "models": engine.names()}


@router.post("/api/v1/models/{variant}/unload", dependencies=[AdminDep])
async def release_variant(variant: str, engine: EngineDep) -> dict[str, Any]:
    """The seed's "unload" is our release. It keyed models by variant (base/awq/bnb): a variant or a name."""
    names = [m.name for m in engine.report().models if variant in (m.name, m.variant)]
    if not names:
        names = [engine.resolve(variant)]  # raises the 404 naming the served models
    await run_in_threadpool(_release_all, engine, names)
    return {"status": "unloaded", "variant": variant, "models": names}
