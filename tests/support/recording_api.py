"""The operator's own API client with every call it makes recorded, for tests on the real API server."""

from __future__ import annotations

from typing import Any

from tts_operator.api import Api


class RecordingApi(Api):
    """The operator's client, each call recorded as (METHOD, kind) before it goes to the API server."""

    def __init__(self, threads: int) -> None:
        super().__init__(threads)
        self.calls: list[tuple[str, str]] = []

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("GET", kind))
        return await super().get(kind, namespace, name)

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("POST", manifest["kind"]))
        return await super().create(manifest)

    async def patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any], sub: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(("PATCH", kind))
        return await super().patch(kind, namespace, name, patch, sub)
