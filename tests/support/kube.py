"""Kubernetes for tests: the emulator served on a free port with a kubeconfig, blocking helpers, fixtures.

API (import as `from support.kube import ...`; fixtures are registered by `pytest_plugins = ["support.kube"]`
in a conftest or test module):

- `KubeAPI(directory, strict=False)` — the emulator (`support.kube_emulator.Emulator`, see its docstring for
  what it serves and how faithfully; strict mode is a fresh API server) running in a background thread on a
  free port, with a kubeconfig file pointing at it (`.kubeconfig`, `.url`) and blocking helpers that go over
  HTTP like any client:
  `create(res, obj)` (a `status` in obj is then written through `/status`, as a controller would),
  `get(res, ns, name)` (None when absent), `list(res, ns=None, selector=None)`,
  `patch(res, ns, name, patch, status=False)` (merge patch; a list is a JSON patch), `delete(res, ns, name)`,
  `events(ns)`, `wait_for(fn, timeout=...)` (polls `fn()` until truthy, returns its value).
  `res` is a plural from `RESOURCES` ("ttsservices", "pods", "deployments", "services", "serviceaccounts",
  "roles", "rolebindings", "events", "namespaces", "nodes", "customresourcedefinitions"); `ns` is None for
  cluster-scoped ones. `emulator=`, `user_agent=` and `timeout=` let a caller (the bench) bring its own
  `Emulator` subclass and mark its own requests.
- `make_pod(...)` — a running, ready pod of a TTSService as a Deployment would create it (labels, node).
- Fixtures: `kube_api` (a fresh emulator per test, `KUBECONFIG` NOT set in this process),
  `run_operator` (a factory: `run_operator(**env)` starts `tts-operator run --standalone --all-namespaces`
  as a subprocess against `kube_api`, waits for its liveness endpoint, stops it at teardown; returns a
  `Process` with `.logs()`).
- Re-exported for existing importers: `Emulator`, `RESOURCES`, `selector_matches` (support.kube_emulator),
  `Process`, `free_port`, `_executable` (support.procs).
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import kmock
import pytest

from support.kube_emulator import RESOURCES, Emulator, selector_matches
from support.procs import Process, free_port, wait_for
from support.procs import executable as _executable

__all__ = ["RESOURCES", "Emulator", "KubeAPI", "Process", "_executable", "free_port", "kube_api", "make_pod",
           "run_operator", "selector_matches"]



def _path(plural: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    group, version, _, namespaced, _ = RESOURCES[plural]
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespaced and namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    if name:
        base += f"/{name}"
    if sub:
        base += f"/{sub}"
    return base


class KubeAPI:
    """The emulator served from a background thread, with blocking HTTP helpers for tests."""

    def __init__(self, directory: Path, strict: bool = False, *, emulator: Emulator | None = None,
                 user_agent: str | None = None, timeout: float = 10.0) -> None:
        self.emulator = Emulator() if emulator is None else emulator
        self.emulator.strict = strict
        self.emulator.declare_resources()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kube-emulator", daemon=True)
        self._thread.start()
        self._server = kmock.Server(self.emulator)
        self._run(self.emulator.__aenter__())
        self._run(self._server.__aenter__())
        self.url = str(self._server.url).rstrip("/")
        self.kubeconfig = directory / "kubeconfig"
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "emulator"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                          "namespace": "default"}}],
        }))
        headers = {"User-Agent": user_agent} if user_agent else None
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def close(self) -> None:
        self.http.close()
        try:
            self._run(self._server.__aexit__(None, None, None))
            self._run(self.emulator.__aexit__(None, None, None))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    @staticmethod
    def _check(response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise AssertionError(f"{response.request.method} {response.request.url}: "
                                 f"{response.status_code} {response.text[:500]}")
        data: dict[str, Any] = response.json()
        return data

    def create(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        namespace = obj.get("metadata", {}).get("namespace", "default")
        created = self._check(self.http.post(_path(plural, namespace), json=obj))
        if obj.get("status") and "status" in RESOURCES[plural][4]:
            # The API ignores status on create; a test's status is what a controller would write next.
            created = self.patch(plural, namespace, created["metadata"]["name"], {"status": obj["status"]},
                                 status=True)
        return created

    def get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        response = self.http.get(_path(plural, namespace, name))
        return None if response.status_code == 404 else self._check(response)

    def list(self, plural: str, namespace: str | None = None, selector: str | None = None
             ) -> list[dict[str, Any]]:
        params = {"labelSelector": selector} if selector else {}
        response = self.http.get(_path(plural, namespace), params=params)
        items: list[dict[str, Any]] = self._check(response)["items"]
        return items

    def patch(self, plural: str, namespace: str | None, name: str, patch: dict[str, Any] | builtins.list[Any],
              status: bool = False) -> dict[str, Any]:
        kind = "json-patch+json" if isinstance(patch, list) else "merge-patch+json"
        return self._check(self.http.patch(
            _path(plural, namespace, name, "status" if status else None), content=json.dumps(patch),
            headers={"Content-Type": f"application/{kind}"}))

    def delete(self, plural: str, namespace: str | None, name: str) -> None:
        self._check(self.http.delete(_path(plural, namespace, name)))

    def events(self, namespace: str | None = None) -> builtins.list[dict[str, Any]]:
        return self.list("events", namespace)

    wait_for = staticmethod(wait_for)


def make_pod(service: str, name: str, namespace: str = "default", node: str = "node-a",
             annotations: dict[str, str] | None = None, ready: bool = True) -> dict[str, Any]:
    """A pod as the service's Deployment would make it (labels the operator selects on)."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": dict(annotations or {}),
                     "labels": {"app.kubernetes.io/name": "residency",
                                "app.kubernetes.io/managed-by": "tts-operator",
                                "tts.residency.dev/service": service}},
        "spec": {"nodeName": node, "containers": [{"name": "runtime", "image": "runtime:test"},
                                                  {"name": "agent", "image": "agent:test"}]},
        "status": {"phase": "Running",
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }



@pytest.fixture()
def kube_api(tmp_path: Path) -> Iterator[KubeAPI]:
    api = KubeAPI(tmp_path)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture()
def run_operator(kube_api: KubeAPI, tmp_path: Path) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(**extra_env: str) -> Process:
        port = free_port()
        env = {**os.environ, "KUBECONFIG": str(kube_api.kubeconfig),
               "RESIDENCY_RUNTIME_IMAGE": "ghcr.io/residency-dev/residency-runtime:test",
               "RESIDENCY_AGENT_IMAGE": "ghcr.io/residency-dev/residency-operator:test",
               "PYTHONUNBUFFERED": "1", **extra_env}
        args = [_executable("tts-operator"), "run", "--standalone", "--all-namespaces", "--verbose",
                "--liveness", f"http://127.0.0.1:{port}/healthz"]
        proc = Process(args, env, tmp_path / f"operator-{len(started)}.log")
        started.append(proc)
        proc.wait_until_ok(f"http://127.0.0.1:{port}/healthz", timeout=30, what="the operator")
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


def main(argv: list[str] | None = None) -> int:
    """`PYTHONPATH=tests python -m support.kube [--strict] DIR`: serve the emulator until Ctrl-C, so that
    the e2e suite can be run by hand against it (`KUBECONFIG=DIR/kubeconfig pytest -m k8s tests/e2e`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m support.kube", description=main.__doc__)
    parser.add_argument("directory", type=Path, help="where to write the kubeconfig")
    parser.add_argument("--strict", action="store_true", help="like a fresh API server (see the module doc)")
    args = parser.parse_args(argv)
    args.directory.mkdir(parents=True, exist_ok=True)
    api = KubeAPI(args.directory, strict=args.strict)
    print(f"serving {api.url}\nexport KUBECONFIG={api.kubeconfig}", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        api.close()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
