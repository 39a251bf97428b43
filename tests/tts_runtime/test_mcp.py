"""MCP tools over streamable HTTP at /mcp, driven by the official SDK's own client against the real app."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from support.background import serve_in_thread
from tts_runtime.server import create_app
from tts_runtime.settings import Settings

TINY = {
    "name": "tiny",
    "backend": "torch",
    "factory": "support.tiny:factory",
    "execution": "inline",
}
TOKEN = "mcp-admin-token"


@pytest.fixture
def url() -> Iterator[str]:
    settings = Settings(models_json=json.dumps({"models": [TINY]}), device="cpu", admin_token=TOKEN)
    with serve_in_thread(create_app(settings)) as base:
        yield f"{base}/mcp"


def connect(url: str, token: str | None) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=30)))


def structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    return dict(result.structured_content)


def state(report: dict[str, Any]) -> str:
    return str(report["models"][0]["state"])


async def test_the_original_tools_are_listed(url: str) -> None:
    async with connect(url, None) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
    assert {
        "get_gpu_status",
        "offload_gpu",
        "release_gpu",
        "update_gpu_timeout",
        "load_model",
        "set_policy",
    } <= names


async def test_tools_drive_residency_with_the_admin_token(url: str) -> None:
    async with connect(url, TOKEN) as client:
        assert state(structured(await client.call_tool("get_gpu_status", {}))) == "unloaded"
        loaded = structured(await client.call_tool("load_model", {"model": "tiny"}))
        assert loaded["state"] == "gpu"
        offloaded = structured(await client.call_tool("offload_gpu", {}))
        assert offloaded["offloaded"] == ["tiny"] and state(offloaded["residency"]) == "cpu"
        restored = structured(await client.call_tool("load_model", {"model": "tiny"}))
        assert restored["state"] == "gpu"  # from cpu, load_model restores
        timeout = structured(await client.call_tool("update_gpu_timeout", {"timeout_seconds": 120}))
        assert timeout["policies"]["tiny"]["idleOffloadSeconds"] == 120
        policy = structured(
            await client.call_tool("set_policy", {"model": "tiny", "offload_after_use": False, "priority": 3})
        )
        assert (policy["offloadAfterUse"], policy["priority"], policy["idleOffloadSeconds"]) == (
            False,
            3,
            120,
        )
        released = structured(await client.call_tool("release_gpu", {"model": "tiny"}))
        assert state(released["residency"]) == "unloaded"
        status = structured(await client.call_tool("get_gpu_status", {}))
        assert status["models"][0]["policy"]["priority"] == 3 and status["models"][0]["vramBytes"] == 0


async def test_mutating_tools_refuse_without_the_token_but_status_is_open(url: str) -> None:
    for token in (None, "wrong"):
        async with connect(url, token) as client:
            assert state(structured(await client.call_tool("get_gpu_status", {}))) == "unloaded"
            for tool, args in [
                ("load_model", {"model": "tiny"}),
                ("offload_gpu", {}),
                ("release_gpu", {}),
                ("update_gpu_timeout", {"timeout_seconds": 5}),
                ("set_policy", {"model": "tiny", "pinned": True}),
            ]:
                result = await client.call_tool(tool, args)
                assert result.is_error and "unauthorized" in result.content[0].text, tool
            assert state(structured(await client.call_tool("get_gpu_status", {}))) == "unloaded"


async def test_tool_errors_say_what_is_wrong(url: str) -> None:
    async with connect(url, TOKEN) as client:
        unknown = await client.call_tool("load_model", {"model": "nope"})
        assert unknown.is_error and "nope" in unknown.content[0].text and "tiny" in unknown.content[0].text
        negative = await client.call_tool("update_gpu_timeout", {"timeout_seconds": -1})
        assert negative.is_error and ">= 0" in negative.content[0].text
        # The contract's rules, as on every other write path.
        too_high = await client.call_tool("set_policy", {"model": "tiny", "priority": 5000})
        assert too_high.is_error and "priority" in too_high.content[0].text
        early = await client.call_tool(
            "set_policy",
            {
                "model": "tiny",
                "offload_after_use": False,
                "idle_offload_seconds": 600,
                "idle_release_seconds": 5,
            },
        )
        assert early.is_error and "idleReleaseSeconds must be 0" in early.content[0].text


async def test_stdio_server_for_local_clients() -> None:
    """`tts-runtime mcp`: the same tools over stdio, launched by the client as a subprocess."""
    import os
    import sys

    from mcp import StdioServerParameters

    params = StdioServerParameters(
        # The client passes only a few variables on by default: PYTHONPATH carries this checkout and tests/.
        env=dict(os.environ),
        command=sys.executable,
        args=[
            "-m",
            "tts_runtime",
            "mcp",
            "--model",
            "tiny=support.tiny:factory",
            "--device",
            "cpu",
        ],
    )
    async with Client(params) as client:
        assert state(structured(await client.call_tool("get_gpu_status", {}))) == "unloaded"
        assert structured(await client.call_tool("load_model", {"model": "tiny"}))["state"] == "gpu"
        assert state(structured(await client.call_tool("release_gpu", {}))["residency"]) == "unloaded"
