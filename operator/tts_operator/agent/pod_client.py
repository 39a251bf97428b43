"""Kubernetes access of the agent: its own pod only — read, watch and merge-patch its annotations."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

RBAC_HINT = (
    "the agent's service account needs a Role in namespace {ns} with rule "
    "{{apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'watch', 'patch']}} "
    "and a RoleBinding to it (see docs/agent.md)"
)


class PodApiError(Exception):
    """The Kubernetes API failed or could not be reached: retry later."""


class PodNotFound(PodApiError):
    """The pod does not exist (yet): it may be being created, keep retrying."""


class PodForbidden(PodApiError):
    """RBAC refused the call: the message names the missing rule."""


def load_kube_config() -> None:
    """In-cluster credentials in a pod, else KUBECONFIG (so the agent also runs as a local process)."""
    from kubernetes import config

    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return
        except config.ConfigException as err:
            log.info("no in-cluster credentials (%s); trying KUBECONFIG", err)
    config.load_kube_config()  # type: ignore[no-untyped-call]


class PodClient:
    """Reads, watches and patches one pod; every failure becomes a PodApiError that says what to do."""

    def __init__(
        self, name: str, namespace: str, request_timeout: float = 10.0, api_client: Any = None
    ) -> None:
        """`api_client`: a configured `kubernetes.client.ApiClient`; None uses the loaded global config."""
        from kubernetes import client

        self.name = name
        self.namespace = namespace
        self._timeout = request_timeout
        self._api = client.CoreV1Api(api_client)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _error(self, verb: str, err: Exception) -> PodApiError:
        from kubernetes.client.exceptions import ApiException

        if isinstance(err, ApiException):
            status = err.status or 0
            if status == 404:
                return PodNotFound(f"pod {self.ref} not found ({verb}); it may still be being created")
            if status in (401, 403):
                hint = RBAC_HINT.format(ns=self.namespace)
                return PodForbidden(f"{verb} pod {self.ref} refused (HTTP {status}): {hint}")
            return PodApiError(f"{verb} pod {self.ref}: HTTP {status} {err.reason}")
        return PodApiError(f"{verb} pod {self.ref}: {err!r}")

    def _raw(self, response: Any) -> dict[str, Any]:
        data = json.loads(response.data)
        if not isinstance(data, dict):
            raise PodApiError(f"pod {self.ref}: the API answered {type(data).__name__}, not an object")
        return data

    def get(self) -> dict[str, Any]:
        """The pod as a plain dict (no model deserialization: it must not trip over unknown fields)."""
        try:
            response = self._api.read_namespaced_pod(
                self.name, self.namespace, _preload_content=False, _request_timeout=self._timeout
            )
            return self._raw(response)
        except PodApiError:
            raise
        except Exception as err:  # the client raises urllib3, socket and API errors alike
            raise self._error("get", err) from err

    def patch_annotations(self, changes: dict[str, str | None]) -> dict[str, Any]:
        """JSON merge patch of the pod's annotations (None removes one); answers the patched pod."""
        body = {"metadata": {"annotations": changes}}
        try:
            response = self._api.patch_namespaced_pod(
                self.name,
                self.namespace,
                body,
                _content_type="application/merge-patch+json",
                _preload_content=False,
                _request_timeout=self._timeout,
            )
            return self._raw(response)
        except PodApiError:
            raise
        except Exception as err:
            raise self._error("patch", err) from err

    def watch(self, stop: threading.Event, timeout_seconds: int = 300) -> Iterator[dict[str, Any] | None]:
        """List then watch this pod: yields the pod dict on every change, None when it is deleted.

        Returns when the server ends the watch (call again to re-list); raises PodApiError on failure.
        The field selector keeps a real API server's traffic to this one pod; the name is ALSO checked
        here because not every server (emulators, proxies) honours selectors.
        """
        from kubernetes import watch

        selector = f"metadata.name={self.name}"
        try:
            response = self._api.list_namespaced_pod(
                self.namespace,
                field_selector=selector,
                _preload_content=False,
                _request_timeout=self._timeout,
            )
            listing = self._raw(response)
        except PodApiError:
            raise
        except Exception as err:
            raise self._error("list", err) from err
        mine = [item for item in listing.get("items") or [] if self._is_mine(item)]
        yield mine[0] if mine else None
        resource_version = (listing.get("metadata") or {}).get("resourceVersion")
        watcher = watch.Watch()  # type: ignore[no-untyped-call]
        kwargs: dict[str, Any] = {
            "field_selector": selector,
            "timeout_seconds": timeout_seconds,
            # A client-side bound too: a silently dead connection must not hang the watch forever.
            "_request_timeout": (self._timeout, timeout_seconds + 30),
            "deserialize": False,
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        try:
            for event in watcher.stream(self._api.list_namespaced_pod, self.namespace, **kwargs):  # type: ignore[no-untyped-call]
                if stop.is_set():
                    watcher.stop()  # type: ignore[no-untyped-call]
                    return
                obj = event.get("object") if isinstance(event, dict) else None
                if not isinstance(obj, dict) or not self._is_mine(obj):
                    continue
                yield None if event.get("type") == "DELETED" else obj
        except PodApiError:
            raise
        except Exception as err:
            raise self._error("watch", err) from err

    def _is_mine(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return bool(meta.get("name") == self.name and meta.get("namespace", self.namespace) == self.namespace)


def annotations_of(pod: dict[str, Any] | None) -> dict[str, str]:
    if pod is None:
        return {}
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return {str(k): str(v) for k, v in annotations.items() if v is not None}
