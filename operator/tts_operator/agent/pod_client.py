"""Kubernetes access of the agent: its own pod only — read, watch and merge-patch its annotations."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from tts_operator.kube import Kube, KubeApiError

RBAC_HINT = (
    "the agent's service account needs a Role in namespace {ns} with rule "
    "{{apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'watch', 'patch']}} "
    "and a RoleBinding to it (see docs/agent.md)"
)


class PodClient:
    """Reads, watches and patches one pod over the shared client (tts_operator.kube); every failure is a
    KubeApiError whose message says what to do, and whose `temporary` says whether it may pass by itself."""

    def __init__(
        self, name: str, namespace: str, request_timeout: float = 10.0, api_client: Any = None
    ) -> None:
        """`api_client`: a configured `kubernetes.client.ApiClient`; None uses the loaded global config."""
        self.name = name
        self.namespace = namespace
        self._kube = Kube(api_client, timeout=request_timeout)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _explain(self, verb: str, err: KubeApiError) -> KubeApiError:
        """The same error, saying which pod and, for a refusal, which RBAC rule is missing."""
        if err.status == 404:
            message = f"pod {self.ref} not found ({verb}); it may still be being created"
        elif err.status in (401, 403):
            message = f"{verb} pod {self.ref} refused: {RBAC_HINT.format(ns=self.namespace)}"
        else:
            message = f"{verb} pod {self.ref}: {err}"
        explained = KubeApiError(err.status, message, err.retry_after)
        explained.__cause__ = err
        return explained

    def get(self) -> dict[str, Any]:
        """The pod as a plain dict."""
        try:
            found = self._kube.get("Pod", self.namespace, self.name)
        except KubeApiError as err:
            raise self._explain("get", err) from err
        if found is None:
            raise self._explain("get", KubeApiError(404, "not found"))
        return found

    def patch_annotations(self, changes: dict[str, str | None]) -> dict[str, Any]:
        """JSON merge patch of the pod's annotations (None removes one); answers the patched pod."""
        try:
            return self._kube.patch("Pod", self.namespace, self.name, {"metadata": {"annotations": changes}})
        except KubeApiError as err:
            raise self._explain("patch", err) from err

    def watch(self, stop: threading.Event, timeout_seconds: int = 300) -> Iterator[dict[str, Any] | None]:
        """List then watch this pod: yields the pod dict on every change, None when it is deleted.

        Returns when the server ends the watch (call again to re-list); raises KubeApiError on failure.
        The field selector keeps a real API server's traffic to this one pod; the name is ALSO checked
        here because not every server (emulators, proxies) honours selectors.
        """
        selector = f"metadata.name={self.name}"
        try:
            listing = self._kube.list("Pod", self.namespace, field_selector=selector)
        except KubeApiError as err:
            raise self._explain("list", err) from err
        mine = [item for item in listing.get("items") or [] if self._is_mine(item)]
        yield mine[0] if mine else None
        try:
            for kind, obj in self._kube.watch(
                "Pod",
                self.namespace,
                stop,
                field_selector=selector,
                resource_version=(listing.get("metadata") or {}).get("resourceVersion"),
                timeout_seconds=timeout_seconds,
            ):
                if self._is_mine(obj):
                    yield None if kind == "DELETED" else obj
        except KubeApiError as err:
            raise self._explain("watch", err) from err

    def _is_mine(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return bool(meta.get("name") == self.name and meta.get("namespace", self.namespace) == self.namespace)


def annotations_of(pod: dict[str, Any] | None) -> dict[str, str]:
    if pod is None:
        return {}
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return {str(k): str(v) for k, v in annotations.items() if v is not None}
