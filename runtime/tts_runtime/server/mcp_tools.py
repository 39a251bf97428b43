"""MCP tools of the original project (get_gpu_status, offload_gpu, ...) on the residency engine."""

# No `from __future__ import annotations`: the SDK reads the tools' annotations at registration.
import logging
from typing import Any

import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from tts_contract import PolicyPatch, State
from tts_runtime.engine.errors import ResidencyError
from tts_runtime.server.state import token_matches

log = logging.getLogger("tts_runtime.mcp")


def build_mcp(engine: Any, admin_token: str | None, *, trust_local: bool = False) -> MCPServer:
    """An MCP server whose mutating tools need the admin token (over HTTP) when one is configured.

    `trust_local`: a stdio server is a pipe to the process that launched it, so no token is asked.
    """
    server: MCPServer = MCPServer(
        "residency",
        instructions="Inspect and control which TTS models hold GPU memory in this runtime.",
        log_level="WARNING",
    )

    def authorize(ctx: Context) -> None:
        headers = ctx.headers
        if headers is None and trust_local:
            return
        authorization = headers.get("authorization") if headers is not None else None
        if not token_matches(admin_token, authorization):
            raise ToolError(
                "unauthorized: this tool changes residency; send 'Authorization: Bearer <admin token>'"
            )

    def targets(model: str | None) -> list[str]:
        return [engine.resolve(model)] if model else list(engine.names())

    async def run(fn: Any, *args: Any) -> Any:
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except ResidencyError as err:
            raise ToolError(str(err.args[0]) if err.args else type(err).__name__) from err

    @server.tool(
        description="Residency of every model: state (gpu/cpu/unloaded/...), GPU and host bytes, policy."
    )
    async def get_gpu_status() -> dict[str, Any]:
        report: dict[str, Any] = engine.report().to_json()
        return report

    @server.tool(description="Move idle models' weights from GPU to host RAM (all models, or the one named).")
    async def offload_gpu(ctx: Context, model: str | None = None) -> dict[str, Any]:
        authorize(ctx)
        names = await run(targets, model)
        offloaded: list[str] = []
        for name in names:
            if engine.model_report(name).state == State.GPU:
                await run(engine.offload, name)
                offloaded.append(name)
        return {"offloaded": offloaded, "residency": engine.report().to_json()}

    @server.tool(description="Release models completely: 0 bytes of GPU memory, host RAM freed too.")
    async def release_gpu(ctx: Context, model: str | None = None) -> dict[str, Any]:
        authorize(ctx)
        names = await run(targets, model)
        for name in names:
            await run(engine.release, name)
        return {"released": names, "residency": engine.report().to_json()}

    @server.tool(
        description="Set the idle time (seconds) after which a model leaves the GPU (idleOffloadSeconds)."
    )
    async def update_gpu_timeout(
        ctx: Context, timeout_seconds: float, model: str | None = None
    ) -> dict[str, Any]:
        authorize(ctx)
        try:
            patch = PolicyPatch.model_validate({"idle_offload_seconds": timeout_seconds})
        except ValueError as err:
            raise ToolError(f"timeout_seconds must be a finite number of seconds >= 0: {err}") from err
        names = await run(targets, model)
        policies = await run(engine.set_policies, names, patch)
        return {"policies": {name: policy.to_json() for name, policy in policies.items()}}

    @server.tool(description="Load a model onto the GPU now (or restore it from host RAM).")
    async def load_model(ctx: Context, model: str) -> dict[str, Any]:
        authorize(ctx)
        name = await run(engine.resolve, model)
        verb = engine.restore if engine.model_report(name).state == State.CPU else engine.load
        report = await run(verb, name)
        result: dict[str, Any] = report.model_dump(mode="json", by_alias=True)
        return result

    @server.tool(description="Change a model's residency policy; fields left out keep their value.")
    async def set_policy(
        ctx: Context,
        model: str,
        offload_after_use: bool | None = None,
        idle_offload_seconds: float | None = None,
        idle_release_seconds: float | None = None,
        pinned: bool | None = None,
        priority: int | None = None,
    ) -> dict[str, Any]:
        authorize(ctx)
        fields = {
            "offload_after_use": offload_after_use,
            "idle_offload_seconds": idle_offload_seconds,
            "idle_release_seconds": idle_release_seconds,
            "pinned": pinned,
            "priority": priority,
        }
        try:
            patch = PolicyPatch.model_validate({k: v for k, v in fields.items() if v is not None})
        except ValueError as err:
            raise ToolError(f"invalid policy: {err}") from err
        name = await run(engine.resolve, model)
        policy = await run(engine.set_policy, name, patch)
        result: dict[str, Any] = policy.to_json()
        return result

    return server
