"""A thin JSON client for the Kubernetes API: raw dicts in and out, blocking calls run in a thread."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes

MERGE_PATCH = "application/merge-patch+json"

# kind -> (API prefix, plural)
PATHS = {
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "Pod": ("/api/v1", "pods"),
    "ResourceClaimTemplate": ("/apis/resource.k8s.io/v1", "resourceclaimtemplates"),
    "ResourceClaim": ("/apis/resource.k8s.io/v1", "resourceclaims"),
    "TTSService": ("/apis/tts.residency.dev/v1alpha1", "ttsservices"),
}


class KubeApiError(Exception):
    """A Kubernetes API call answered an error status (not the runtime's HTTP ApiError)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def path(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    prefix, plural = PATHS[kind]
    return "/".join(p for p in (f"{prefix}/namespaces/{namespace}/{plural}", name, sub) if p)


class Api:
    """One shared client (created once at startup, kept in kopf's memo)."""

    def __init__(self, threads: int) -> None:
        """`threads`: blocking calls in flight at once (OperatorSettings.api_threads)."""
        try:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
        config = kubernetes.client.Configuration.get_default_copy()
        config.connection_pool_maxsize = threads  # one pooled connection per thread, none thrown away
        self._client = kubernetes.client.ApiClient(config)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kube-api")

    def _call(self, method: str, url: str, body: Any = None, content_type: str | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        params = self._client.param_serialize(
            method, url, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            response = self._client.call_api(*params, _request_timeout=30)
            response.read()  # type: ignore[no-untyped-call]
        except kubernetes.client.ApiException as exc:
            raise KubeApiError(int(exc.status or 0), str(exc.body or exc.reason)) from None
        if response.status >= 400:
            raise KubeApiError(response.status, bytes(response.data or b"").decode(errors="replace")[:500])
        return json.loads(response.data) if response.data else None

    async def request(self, method: str, url: str, body: Any = None, content_type: str | None = None) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._call, method, url, body, content_type
        )

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self.request("GET", path(kind, namespace, name))
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        url = path(manifest["kind"], meta["namespace"])
        created: dict[str, Any] = await self.request("POST", url, manifest)
        return created

    async def patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any], sub: str | None = None
    ) -> dict[str, Any]:
        patched: dict[str, Any] = await self.request(
            "PATCH", path(kind, namespace, name, sub), patch, MERGE_PATCH
        )
        return patched

    async def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> bool:
        """Delete one object (only the one with `uid`, when given); False when it was already gone."""
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            await self.request("DELETE", path(kind, namespace, name), body)
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()  # type: ignore[no-untyped-call]
