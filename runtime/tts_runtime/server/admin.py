"""Residency routes: report, models, admin verbs, policy, health and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tts_contract import PolicyPatch, Verb
from tts_runtime.engine import Engine
from tts_runtime.server.state import AdminDep, EngineDep, RuntimeDep

router = APIRouter()


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"])
async def readyz(runtime: RuntimeDep) -> Response:
    # A lazily-unloaded model is still ready: readiness never waits for weights. A model whose worker
    # cannot make progress (stopped, hung in the kernel's eyes) is not: its requests would only pile up.
    if runtime.drain.active:
        return JSONResponse({"status": "draining"}, status_code=503)
    if not runtime.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    stuck = runtime.engine.cannot_serve()
    if stuck:
        return JSONResponse({"status": "degraded", "models": stuck}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/v1/residency", tags=["residency"])
async def residency(engine: EngineDep) -> dict[str, Any]:
    return engine.report().to_json()


@router.get("/v1/models", tags=["residency"])
async def list_models(engine: EngineDep) -> dict[str, Any]:
    """OpenAI's model list, each entry carrying its residency line."""
    data = [
        {"id": model["name"], "object": "model", "created": 0, "owned_by": "residency", "residency": model}
        for model in engine.report().to_json()["models"]
    ]
    return {"object": "list", "data": data}


@router.get("/v1/models/{model}", tags=["residency"])
async def get_model(model: str, engine: EngineDep) -> dict[str, Any]:
    report = engine.model_report(engine.resolve(model)).model_dump(mode="json", by_alias=True)
    return {
        "id": report["name"],
        "object": "model",
        "created": 0,
        "owned_by": "residency",
        "residency": report,
    }


async def perform(engine: Engine, model: str, verb: Verb) -> dict[str, Any]:
    """Run a blocking admin verb off the event loop; answer the model's new residency line."""
    name = engine.resolve(model)
    report = await run_in_threadpool(getattr(engine, verb.value), name)
    result: dict[str, Any] = report.model_dump(mode="json", by_alias=True)
    return result


@router.post("/v1/models/{model}/load", tags=["admin"], dependencies=[AdminDep])
async def load(model: str, engine: EngineDep) -> dict[str, Any]:
    return await perform(engine, model, Verb.LOAD)


@router.post("/v1/models/{model}/offload", tags=["admin"], dependencies=[AdminDep])
async def offload(model: str, engine: EngineDep) -> dict[str, Any]:
    return await perform(engine, model, Verb.OFFLOAD)


@router.post("/v1/models/{model}/restore", tags=["admin"], dependencies=[AdminDep])
async def restore(model: str, engine: EngineDep) -> dict[str, Any]:
    return await perform(engine, model, Verb.RESTORE)


@router.post("/v1/models/{model}/release", tags=["admin"], dependencies=[AdminDep])
async def release(model: str, engine: EngineDep) -> dict[str, Any]:
    return await perform(engine, model, Verb.RELEASE)


@router.put("/v1/models/{model}/policy", tags=["admin"], dependencies=[AdminDep])
async def set_policy(model: str, engine: EngineDep, patch: PolicyPatch) -> dict[str, Any]:
    """Partial update (camelCase or snake_case); answers the whole new policy."""
    name = engine.resolve(model)
    policy = await run_in_threadpool(engine.set_policy, name, patch)
    return policy.to_json()


@router.get("/v1/models/{model}/policy", tags=["residency"])
async def get_policy(model: str, engine: EngineDep) -> dict[str, Any]:
    return engine.model_report(engine.resolve(model)).policy.to_json()


@router.get("/metrics", tags=["health"])
async def metrics(runtime: RuntimeDep) -> Response:
    from tts_runtime.server.metrics import CONTENT_TYPE

    body = await run_in_threadpool(runtime.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)
