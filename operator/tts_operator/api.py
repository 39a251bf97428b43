"""The operator's asynchronous face of the Kubernetes client: each blocking call runs in a thread pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from tts_operator.kube import Kube, load_config

T = TypeVar("T")


class Api:
    """One shared client (created once at startup, kept in kopf's memo); errors are kube.KubeApiError."""

    def __init__(self, threads: int) -> None:
        """`threads`: blocking calls in flight at once (OperatorSettings.api_threads)."""
        load_config()
        self._kube = Kube(pool=threads)  # one pooled connection per thread, none thrown away
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kube-api")

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._run(self._kube.get, kind, namespace, name)

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return await self._run(self._kube.create, manifest)

    async def patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any], sub: str | None = None
    ) -> dict[str, Any]:
        return await self._run(self._kube.patch, kind, namespace, name, patch, sub)

    async def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> bool:
        """Delete one object (only the one with `uid`, when given); False when it was already gone."""
        return await self._run(self._kube.delete, kind, namespace, name, uid)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._kube.close()
