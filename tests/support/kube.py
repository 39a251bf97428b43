"""Blocking helpers for tests on the real API server (support/cluster.py), scoped to one test's namespace.

API (import as `from support.kube import ...`; the fixtures are registered for the whole suite by
tests/conftest.py):

- `KubeAPI(cluster, namespace, directory)` — blocking helpers that go over HTTPS like any client:
  `create(res, obj)` (the namespace defaults to the test's; a `status` in obj is then written through
  `/status`, as a controller would; a pod bound to a node gets that Node, kept Ready),
  `get(res, ns, name)` (None when absent), `list(res, ns=None, selector=None)`,
  `patch(res, ns, name, patch, status=False)` (merge patch; a list is a JSON patch), `delete(res, ns, name)`
  (a pod is then removed at once, as its kubelet would once the containers stopped),
  `events(ns)`, `wait_for(fn, timeout=..., what=...)` (polls `fn()` until truthy, returns its value),
  `more_namespaces(count)` (fresh namespaces deleted with the test's).
  `ns=None` means the test's namespace (`.namespace`). `res` is a plural from `RESOURCES`.
  What a kubelet would do for a pod the Deployment made (it stays Pending on a control plane without
  nodes): `run_pod(name, node="node-a", ready=True)` binds it to `node` as the scheduler does and writes its
  status as the kubelet does; `run_service_pods(service, count, node=...)` waits for `count` pods of the
  service and runs them. `.kubeconfig` (admin) and `.cluster` (the `Cluster`) for processes and kubectl.
  `writes(user, since)`: the audit events (create/update/patch/delete) of `user` after `cluster.audit_mark()`.
  `pod_versions(name=None)` -> `PodVersions`: every version of a pod (or of every pod of the namespace) from
  now on, from a watch (`.seen(name=None)`).
- `make_pod(service, name, namespace, node="node-a", annotations=None, ready=True)` — a running pod of a
  TTSService as its Deployment would make it (the labels the operator selects on), for `create("pods", ...)`.
- Fixtures: `kube_api` (a `KubeAPI` on a fresh namespace of the session's cluster), `run_operator` (a factory:
  `run_operator(*more_namespaces, **env)` starts `tts-operator run --standalone -n NS` as a subprocess
  watching the test's namespace (and `more_namespaces`, globs allowed) as its own ServiceAccount, waits for
  its liveness endpoint, stops it at teardown; returns an `OperatorProcess` with `.logs()` and `.user`, the
  audit user of its API calls, and `.wait_logged(text, count)`, a wait for the operator to say that it is
  done with something: the positive signal a test waits for before checking that nothing else happened).
"""

from __future__ import annotations

import builtins
import copy
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.cluster import Cluster
from support.procs import Process, executable, free_port, wait_for

__all__ = [
    "RESOURCES",
    "KubeAPI",
    "OperatorProcess",
    "PodVersions",
    "Process",
    "kube_api",
    "make_pod",
    "run_operator",
]

# plural -> (group, version, kind, namespaced)
RESOURCES: dict[str, tuple[str, str, str, bool]] = {
    "ttsservices": ("tts.residency.dev", "v1alpha1", "TTSService", True),
    "pods": ("", "v1", "Pod", True),
    "services": ("", "v1", "Service", True),
    "serviceaccounts": ("", "v1", "ServiceAccount", True),
    "events": ("", "v1", "Event", True),
    "namespaces": ("", "v1", "Namespace", False),
    "nodes": ("", "v1", "Node", False),
    "deployments": ("apps", "v1", "Deployment", True),
    "replicasets": ("apps", "v1", "ReplicaSet", True),
    "roles": ("rbac.authorization.k8s.io", "v1", "Role", True),
    "rolebindings": ("rbac.authorization.k8s.io", "v1", "RoleBinding", True),
    "customresourcedefinitions": ("apiextensions.k8s.io", "v1", "CustomResourceDefinition", False),
    "resourceclaimtemplates": ("resource.k8s.io", "v1", "ResourceClaimTemplate", True),
    "resourceclaims": ("resource.k8s.io", "v1", "ResourceClaim", True),
}
SERVICE_LABEL = "tts.residency.dev/service"


def path(plural: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    group, version, _, namespaced = RESOURCES[plural]
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespaced and namespace:
        base += f"/namespaces/{namespace}"
    return "/".join(p for p in (f"{base}/{plural}", name, sub) if p)


class KubeAPI:
    """Blocking helpers over the session's real API server, defaulting to one test's namespace."""

    def __init__(self, cluster: Cluster, namespace: str, directory: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.directory = directory
        self.kubeconfig = cluster.kubeconfig
        self._more: builtins.list[str] = []
        self._watches: builtins.list[PodVersions] = []

    def more_namespaces(self, count: int) -> builtins.list[str]:
        """`count` more fresh namespaces (`<namespace>-<i>`), deleted with the test's own."""
        names = [f"{self.namespace}-{len(self._more) + i}" for i in range(count)]
        for name in names:
            self.cluster.create_namespace(name=name)
            self._more.append(name)
        return names

    def pod_versions(self, name: str | None = None) -> PodVersions:
        """Every version of pod `name` (or of every pod here) from now on, as a watch sees them (stopped with
        the test)."""
        versions = PodVersions(self, name)
        self._watches.append(versions)
        return versions

    def close(self) -> None:
        for watch in self._watches:
            watch.stop()
        for name in self._more:
            self.cluster.delete_namespace(name)

    def _ns(self, plural: str, namespace: str | None) -> str | None:
        return (namespace or self.namespace) if RESOURCES[plural][3] else None

    def _check(self, method: str, url: str, status: int, body: Any) -> dict[str, Any]:
        if status >= 400:
            raise AssertionError(f"{method} {url}: {status} {str(body)[:800]}")
        data: dict[str, Any] = body or {}
        return data

    def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        content_type: str | None = None,
        query: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        status, data = self.cluster.request(method, url, body, content_type, query)
        return self._check(method, url, status, data)

    def create(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        namespace = self._ns(plural, meta.get("namespace"))
        if namespace:
            meta["namespace"] = namespace
        if plural == "pods" and obj.get("spec", {}).get("nodeName"):
            self.cluster.ensure_node(obj["spec"]["nodeName"])
        created = self.request("POST", path(plural, namespace), obj)
        if obj.get("status") and plural in ("pods", "ttsservices", "deployments"):
            # The API ignores status on create; a test's status is what a controller would write next.
            created = self.patch(plural, namespace, meta["name"], {"status": obj["status"]}, status=True)
        return created

    def get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        url = path(plural, self._ns(plural, namespace), name)
        status, data = self.cluster.request("GET", url)
        return None if status == 404 else self._check("GET", url, status, data)

    def list(
        self, plural: str, namespace: str | None = None, selector: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        query = {"labelSelector": selector} if selector else None
        items: builtins.list[dict[str, Any]] = self.request(
            "GET", path(plural, self._ns(plural, namespace)), query=query
        )["items"]
        return items

    def patch(
        self,
        plural: str,
        namespace: str | None,
        name: str,
        patch: dict[str, Any] | builtins.list[Any],
        status: bool = False,
    ) -> dict[str, Any]:
        kind = "json-patch+json" if isinstance(patch, list) else "merge-patch+json"
        url = path(plural, self._ns(plural, namespace), name, "status" if status else None)
        return self.request("PATCH", url, patch, f"application/{kind}")

    def delete(self, plural: str, namespace: str | None, name: str) -> None:
        url = path(plural, self._ns(plural, namespace), name)
        self.request("DELETE", url)
        if plural == "pods":
            # A pod on a node is only marked for deletion; its kubelet stops the containers and then removes
            # it (grace period 0). There is no kubelet here: do its part at once.
            status, body = self.cluster.request("DELETE", url, {"gracePeriodSeconds": 0})
            if status not in (200, 404):
                self._check("DELETE", url, status, body)

    def events(self, namespace: str | None = None) -> builtins.list[dict[str, Any]]:
        return self.list("events", namespace)

    wait_for = staticmethod(wait_for)

    # --- what a scheduler and a kubelet would do ------------------------------------------------------------
    def run_pod(
        self, name: str, node: str = "node-a", ready: bool = True, namespace: str | None = None
    ) -> dict[str, Any]:
        """Bind pod `name` to `node` (unless bound) and write its status as that node's kubelet would."""
        ns = self._ns("pods", namespace)
        self.cluster.ensure_node(node)
        pod = self.get("pods", ns, name)
        assert pod is not None, f"pod {ns}/{name} not found"
        if not pod["spec"].get("nodeName"):
            self.request(
                "POST",
                path("pods", ns, name, "binding"),
                {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": name, "namespace": ns},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                },
            )
        return self.patch("pods", ns, name, {"status": _running_status(pod, ready)}, status=True)

    def run_service_pods(
        self, service: str, count: int, node: str = "node-a", ready: bool = True, namespace: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Wait for `count` pods of `service` (made by its Deployment), then run each on `node`."""
        ns = self._ns("pods", namespace)

        def pods() -> builtins.list[dict[str, Any]]:
            found = [
                p
                for p in self.list("pods", ns, f"{SERVICE_LABEL}={service}")
                if not p["metadata"].get("deletionTimestamp")
            ]
            return found if len(found) >= count else []

        found = self.wait_for(pods, timeout=60, what=f"{count} pods of {service}")
        return [self.run_pod(p["metadata"]["name"], node, ready, ns) for p in found[:count]]

    def writes(self, user: str, since: int = 0) -> builtins.list[dict[str, Any]]:
        """The writes `user` made after audit mark `since`, as the API server's audit log saw them."""
        if not self.cluster.audited:
            pytest.skip("this cluster keeps no audit log that the tests can read (see support/cluster.py)")
        return self.cluster.audit(user=user, since=since)


class PodVersions:
    """A watch on one pod (or every pod of the namespace), from now on: every version the API server stored,
    in order, the version of the moment first."""

    def __init__(self, api: KubeAPI, name: str | None = None) -> None:
        from kubernetes import client

        self._versions: builtins.list[dict[str, Any]] = []
        if name is None:
            listed = api.request("GET", path("pods", api.namespace))
            self._versions += listed["items"]
            since = listed["metadata"]["resourceVersion"]
        else:
            pod = api.get("pods", None, name)
            assert pod is not None, f"pod {name} not found"
            self._versions.append(pod)
            since = pod["metadata"]["resourceVersion"]
        self._stopped = threading.Event()
        core = client.CoreV1Api(api.cluster.client)
        selector = {"field_selector": f"metadata.name={name}"} if name else {}
        self._thread = threading.Thread(
            target=self._follow,
            args=(core, api.namespace, since, selector),
            name=f"watch-{name or 'pods'}",
            daemon=True,
        )
        self._thread.start()

    def _follow(self, core: Any, namespace: str, since: str, selector: dict[str, str]) -> None:
        from kubernetes import watch

        while not self._stopped.is_set():
            self._watch = watch.Watch()
            try:
                for event in self._watch.stream(
                    core.list_namespaced_pod,
                    namespace,
                    resource_version=since,
                    timeout_seconds=30,
                    **selector,
                ):
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self._versions.append(event["raw_object"])
                        since = event["raw_object"]["metadata"]["resourceVersion"]
                    if self._stopped.is_set():
                        return
            except Exception:
                self._stopped.wait(0.5)

    def seen(self, name: str | None = None) -> builtins.list[dict[str, Any]]:
        """The versions seen so far (of pod `name` only, if given)."""
        return [v for v in list(self._versions) if name is None or v["metadata"]["name"] == name]

    def stop(self) -> None:
        self._stopped.set()
        watcher = getattr(self, "_watch", None)
        if watcher is not None:
            watcher.stop()


def _running_status(pod: dict[str, Any], ready: bool) -> dict[str, Any]:
    flag = "True" if ready else "False"
    conditions = [{"type": t, "status": "True"} for t in ("PodScheduled", "Initialized")]
    conditions += [{"type": t, "status": flag} for t in ("ContainersReady", "Ready")]
    containers = [
        {
            "name": c["name"],
            "image": c["image"],
            "imageID": "",
            "ready": ready,
            "restartCount": 0,
            "started": True,
            "state": {"running": {}},
        }
        for c in pod["spec"]["containers"]
    ]
    return {
        "phase": "Running",
        "conditions": conditions,
        "containerStatuses": containers,
        "podIP": "127.0.0.1",
        "hostIP": "127.0.0.1",
    }


def make_pod(
    service: str,
    name: str,
    namespace: str | None = None,
    node: str = "node-a",
    annotations: dict[str, str] | None = None,
    ready: bool = True,
) -> dict[str, Any]:
    """A running pod of `service` as its Deployment would make it (the labels the operator selects on)."""
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "annotations": dict(annotations or {}),
            "labels": {
                "app.kubernetes.io/name": "residency",
                "app.kubernetes.io/managed-by": "tts-operator",
                SERVICE_LABEL: service,
            },
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "runtime", "image": "runtime:test"},
                {"name": "agent", "image": "agent:test"},
            ],
        },
    }
    if namespace:
        pod["metadata"]["namespace"] = namespace
    pod["status"] = _running_status(pod, ready)
    return pod


class OperatorProcess(Process):
    """`tts-operator run` as a child process, with the audit user its API calls are made as."""

    user: str

    def logged(self, text: str) -> int:
        """How many lines of the operator's output contain `text`."""
        return sum(text in line for line in self.logs().splitlines())

    def wait_logged(self, text: str, count: int = 1, timeout: float = 30) -> None:
        """Wait until `count` lines of the output contain `text`: the operator says it is done with something
        (e.g. `child event DELETED services NS/voice:` or `Timer 'recheck_service' succeeded`)."""
        wait_for(
            lambda: self.logged(text) >= count, timeout=timeout, what=f"{count}x {text!r} in the operator log"
        )


@pytest.fixture()
def kube_api(kube_cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[KubeAPI]:
    api = KubeAPI(kube_cluster, namespace, tmp_path)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture()
def run_operator(kube_api: KubeAPI, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    started: list[OperatorProcess] = []

    def start(*more_namespaces: str, **extra_env: str) -> OperatorProcess:
        name = f"operator-{len(started)}"
        kubeconfig = kube_api.cluster.identity(kube_api.namespace, name, tmp_path)
        port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "RESIDENCY_RUNTIME_IMAGE": "ghcr.io/residency-dev/residency-runtime:test",
            "RESIDENCY_AGENT_IMAGE": "ghcr.io/residency-dev/residency-operator:test",
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        scope = [arg for ns in (kube_api.namespace, *more_namespaces) for arg in ("-n", ns)]
        args = [
            executable("tts-operator"),
            "run",
            "--standalone",
            *scope,
            "--verbose",
            "--liveness",
            f"http://127.0.0.1:{port}/healthz",
        ]
        proc = OperatorProcess(args, env, tmp_path / f"{name}.log")
        proc.user = Cluster.username(kube_api.namespace, name)
        started.append(proc)
        proc.wait_until_ok(f"http://127.0.0.1:{port}/healthz", timeout=60, what="the operator")
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()
