"""The one Kubernetes client of the operator and the agent: JSON dicts over the official ApiClient."""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import kubernetes

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

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

# The one retry decision for an API error (the operator maps it to kopf.TemporaryError/PermanentError, the
# agent to its log level; both retry). Temporary: the call may succeed later by itself. 0 is no answer at all;
# 404, 409 and 410 mean the object (or the watch's version) moved on meanwhile, and the next pass looks again;
# the rest is the server's trouble. Anything else (400, 401, 403, 422...) needs a person: a rule, a spec.
TEMPORARY = frozenset({0, 404, 408, 409, 410, 425, 429})
MOVED_ON_DELAY = 1.0  # 404/409/410: look again soon, the new state is already there
SERVER_DELAY = 10.0  # no answer, throttled or a server error: do not pile on


class KubeApiError(Exception):
    """A Kubernetes API call failed: `status` is the HTTP status, 0 when the server did not answer."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.retry_after = retry_after

    @property
    def temporary(self) -> bool:
        """Whether trying the same again later may succeed without anyone changing anything."""
        return self.status in TEMPORARY or self.status >= 500

    @property
    def retry_delay(self) -> float:
        """Seconds to wait before the next try: the server's Retry-After, else by the kind of failure."""
        if self.retry_after is not None:
            return self.retry_after
        return MOVED_ON_DELAY if self.status in (404, 409, 410) else SERVER_DELAY


def as_kopf(err: KubeApiError) -> Exception:
    """The error as kopf's retry decision: TemporaryError retried after `retry_delay`, or PermanentError
    (reported; the next change of the object, or the level check's next pass, tries again)."""
    import kopf  # here, not at the top: the agent imports this module and never needs kopf

    if err.temporary:
        return kopf.TemporaryError(str(err), delay=err.retry_delay)
    return kopf.PermanentError(str(err))


def kopf_errors(handler: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """A kopf handler whose API errors become kopf's retry decision (`as_kopf`) instead of kopf's default
    for any exception (a traceback, and a retry a minute later whatever the error)."""

    @functools.wraps(handler)  # keeps the name: kopf's handler id, stored in its progress annotations
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except KubeApiError as err:
            raise as_kopf(err) from err

    return wrapper


def _retry_after(headers: Any) -> float | None:
    value = (headers or {}).get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: the default delay does
        return None


def path(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    prefix, plural = PATHS[kind]
    return "/".join(p for p in (f"{prefix}/namespaces/{namespace}/{plural}", name, sub) if p)


def load_config() -> None:
    """In-cluster credentials in a pod, else KUBECONFIG (so the operator and the agent also run as local
    processes); raises kubernetes.config.ConfigException when there are neither."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
            return
        except kubernetes.config.ConfigException as err:
            log.info("no in-cluster credentials (%s); trying KUBECONFIG", err)
    kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]


class Kube:
    """Blocking calls with plain dicts in and out (no model classes: unknown fields never trip it); safe to
    share between threads. Every failure, the API's or the connection's, is a KubeApiError."""

    def __init__(self, api_client: Any = None, pool: int | None = None, timeout: float = 30.0) -> None:
        """`api_client`: a configured `kubernetes.client.ApiClient`; None uses the loaded global config,
        with `pool` connections kept (one per thread that calls at once)."""
        if api_client is None:
            config = kubernetes.client.Configuration.get_default_copy()
            if pool is not None:
                config.connection_pool_maxsize = pool
            api_client = kubernetes.client.ApiClient(config)
        self._client = api_client
        self.timeout = timeout

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        content_type: str | None = None,
        query: list[tuple[str, str]] | None = None,
        *,
        timeout: Any = None,
        stream: bool = False,
    ) -> Any:
        """One call; answers the parsed JSON body (None when empty), or with `stream` the response itself,
        its body not read (a watch). An error status raises KubeApiError."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        params = self._client.param_serialize(
            method, url, query_params=query, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            response = self._client.call_api(*params, _request_timeout=timeout or self.timeout)
            if response.status < 400 and stream:
                return response.response  # what the client library's Watch reads
            data = response.read()
        except kubernetes.client.ApiException as exc:
            raise KubeApiError(
                int(exc.status or 0), str(exc.body or exc.reason), _retry_after(exc.headers)
            ) from None
        except Exception as exc:  # urllib3 and socket errors alike: the server did not answer
            raise KubeApiError(0, f"{method} {url}: {exc!r}") from exc
        if response.status >= 400:
            text = bytes(data or b"").decode(errors="replace")[:500]
            raise KubeApiError(response.status, text, _retry_after(response.headers))
        return json.loads(data) if data else None

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.request("GET", path(kind, namespace, name))
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.request(
            "POST", path(manifest["kind"], manifest["metadata"]["namespace"]), manifest
        )
        return created

    def patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any], sub: str | None = None
    ) -> dict[str, Any]:
        """A JSON merge patch (None removes a key); answers the patched object."""
        patched: dict[str, Any] = self.request("PATCH", path(kind, namespace, name, sub), patch, MERGE_PATCH)
        return patched

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> bool:
        """Delete one object (only the one with `uid`, when given); False when it was already gone."""
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            self.request("DELETE", path(kind, namespace, name), body)
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def list(self, kind: str, namespace: str, field_selector: str | None = None) -> dict[str, Any]:
        query = [("fieldSelector", field_selector)] if field_selector else None
        listing: dict[str, Any] = self.request("GET", path(kind, namespace), query=query)
        return listing

    def watch(
        self,
        kind: str,
        namespace: str,
        stop: threading.Event,
        *,
        field_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object) from a watch until the server ends it (call again to go on). The client
        library's Watch decodes the stream; an ERROR event (e.g. 410: version too old) raises."""
        url = path(kind, namespace)

        def open_stream(
            *, watch: bool, _preload_content: bool, timeout_seconds: int, _request_timeout: Any
        ) -> Any:
            query = [("watch", "true"), ("timeoutSeconds", str(timeout_seconds))]
            if field_selector:
                query.append(("fieldSelector", field_selector))
            if resource_version:
                query.append(("resourceVersion", resource_version))
            return self.request("GET", url, query=query, timeout=_request_timeout, stream=True)

        watcher = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        try:
            events = watcher.stream(  # type: ignore[no-untyped-call]
                open_stream,
                timeout_seconds=timeout_seconds,
                # A client-side bound too: a silently dead connection must not hang the watch forever.
                _request_timeout=(self.timeout, timeout_seconds + 30),
            )
            for event in events:
                if stop.is_set():
                    watcher.stop()  # type: ignore[no-untyped-call]
                    return
                obj = event.get("raw_object") if isinstance(event, dict) else None
                if isinstance(obj, dict):
                    yield str(event.get("type")), obj
        except KubeApiError:
            raise
        except kubernetes.client.ApiException as exc:
            raise KubeApiError(int(exc.status or 0), str(exc.reason)) from None
        except Exception as exc:
            raise KubeApiError(0, f"watch {url}: {exc!r}") from exc
