"""An in-memory Kubernetes API for tests: kmock's emulator made faithful enough for kopf and our clients.

API (import as `from support.kube import ...`; fixtures are registered by `pytest_plugins = ["support.kube"]`
in a conftest or test module):

- `Emulator` — a `kmock.KubernetesEmulator` that also: stamps `uid`/`resourceVersion`/`generation`/
  `creationTimestamp` and the URL's namespace on create; applies PATCH as JSON patch, merge patch or
  strategic merge patch (approximated as a merge patch: lists are replaced, not merged by key); serves PUT;
  isolates the `status` subresource (the main resource ignores `status`, `/status` only changes it);
  bumps `generation` when anything but metadata/status changes; honours `metadata.resourceVersion`
  preconditions (409); garbage-collects children by `ownerReferences` when their owner is deleted; filters
  lists and watches by `labelSelector` and `fieldSelector` (metadata.name/namespace); puts `kind` in lists;
  answers a missing object or resource with a Kubernetes 404 Status (`deployments.apps "x" not found`).
  Namespaces are cluster-scoped objects (`/api/v1/namespaces[/NAME]`, which kmock alone cannot parse):
  `default`, `kube-system`, `kube-public`, `kube-node-lease` exist; deleting one makes it `Terminating`
  (creating in it is then 403), deletes everything in it, and removes it once no finalizer holds an object.
  A created CRD is `Established` at once and its resources appear in discovery; deleting it deletes its
  objects. While a custom resource's CRD exists, every write of it is admitted like the API server does
  (`support.crd_schema`): schema `default`s applied, unknown fields pruned (422 with
  `?fieldValidation=Strict`), the openAPIV3Schema and the CEL rules checked: 422 `Invalid` with
  `details.causes` naming the field. `nodes` is served and empty: a bare API server without kubelets.
  Strict mode (`KubeAPI(dir, strict=True)`, what the e2e suite runs against) is a fresh API server: a
  custom resource is 404 until its CRD is created, and creating in a namespace that does not exist is 404.
  The default mode stays lenient for the operator's tests (TTSService always served, any namespace).
- `KubeAPI(directory, strict=False)` — the emulator running in a background thread on a free port, with a
  kubeconfig file pointing at it (`.kubeconfig`, `.url`) and blocking helpers that go over HTTP like any
  client:
  `create(res, obj)` (a `status` in obj is then written through `/status`, as a controller would),
  `get(res, ns, name)` (None when absent), `list(res, ns=None, selector=None)`,
  `patch(res, ns, name, patch, status=False)` (merge patch; a list is a JSON patch), `delete(res, ns, name)`,
  `events(ns)`, `wait_for(fn, timeout=...)` (polls `fn()` until truthy, returns its value).
  `res` is a plural from `RESOURCES` ("ttsservices", "pods", "deployments", "services", "serviceaccounts",
  "roles", "rolebindings", "events", "namespaces", "nodes", "customresourcedefinitions"); `ns` is None for
  cluster-scoped ones.
- `make_pod(...)` — a running, ready pod of a TTSService as a Deployment would create it (labels, node).
- Fixtures: `kube_api` (a fresh emulator per test, `KUBECONFIG` NOT set in this process),
  `run_operator` (a factory: `run_operator(**env)` starts `tts-operator run --standalone --all-namespaces`
  as a subprocess against `kube_api`, waits for its liveness endpoint, stops it at teardown; returns a
  `Process` with `.logs()`), `free_port()`.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import httpx
import kmock
import pytest
from kmock._internal import dicts, k8s_dicts, parsing, rendering
from kmock._internal.k8s import KubernetesNotFoundError

from support.crd_schema import admit, version_schema

T = TypeVar("T")

# plural -> (group, version, kind, namespaced, subresources)
RESOURCES: dict[str, tuple[str, str, str, bool, tuple[str, ...]]] = {
    "ttsservices": ("tts.residency.dev", "v1alpha1", "TTSService", True, ("status",)),
    "pods": ("", "v1", "Pod", True, ("status",)),
    "services": ("", "v1", "Service", True, ("status",)),
    "serviceaccounts": ("", "v1", "ServiceAccount", True, ()),
    "events": ("", "v1", "Event", True, ()),
    "namespaces": ("", "v1", "Namespace", False, ("status",)),
    "nodes": ("", "v1", "Node", False, ("status",)),
    "deployments": ("apps", "v1", "Deployment", True, ("status",)),
    "roles": ("rbac.authorization.k8s.io", "v1", "Role", True, ()),
    "rolebindings": ("rbac.authorization.k8s.io", "v1", "RoleBinding", True, ()),
    "customresourcedefinitions": (
        "apiextensions.k8s.io", "v1", "CustomResourceDefinition", False, ("status",)),
}
VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")
SHORT_NAMES = {"ttsservices": ("tts",)}
# Groups an API server serves itself; any other group in RESOURCES exists only once its CRD does.
BUILT_IN_GROUPS = frozenset({"", "apps", "rbac.authorization.k8s.io", "apiextensions.k8s.io"})
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_CLUSTER_NAMESPACE_PATH = re.compile(r"/api/v1/namespaces(?:/([^/]+)(?:/(status|finalize))?)?/?")
_kmock_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    """kmock's parser, except that `/api/v1/namespaces[/NAME[/status]]` is the cluster-scoped Namespace
    resource: kmock reads that prefix as "in namespace NAME" (and fails on the bare list URL)."""
    found = _CLUSTER_NAMESPACE_PATH.fullmatch(path)
    if found is None:
        return _kmock_parse_path(path)
    return parsing.ParsedPath(group="", version="v1", plural="namespaces", namespace=None, name=found[1],
                              subresource=found[2])


# kmock looks the parser up at every request; this swaps in the fix once for every emulator.
parsing.parse_path = _parse_path


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_version(plural: str) -> str:
    group, version, *_ = RESOURCES[plural]
    return f"{group}/{version}" if group else version


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


def _qualified(plural: str) -> str:
    """How the API server names a resource in messages: `services`, `deployments.apps`."""
    group = RESOURCES[plural][0]
    return f"{plural}.{group}" if group else plural


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    return aiohttp.web.json_response(
        {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": code,
         "reason": reason, "message": message}, status=code)


_REQUIREMENT = re.compile(r"\s*(!?)([\w./-]+)\s*(?:(==|=|!=)\s*([\w.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*")


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (=, ==, !=, in, notin, exists, !exists)."""
    parts = re.findall(r"(?:[^,(]|\([^)]*\))+", selector)
    for part in parts:
        m = _REQUIREMENT.fullmatch(part)
        if m is None:
            raise ValueError(f"bad label selector: {selector!r}")
        neg, key, op, value, setop, values = m.groups()
        if op in ("=", "=="):
            ok = labels.get(key) == value
        elif op == "!=":
            ok = labels.get(key) != value
        elif setop:
            choices = {v.strip() for v in values.split(",")}
            ok = (labels.get(key) in choices) if setop == "in" else (labels.get(key) not in choices)
        else:
            ok = (key not in labels) if neg else (key in labels)
        if not ok:
            return False
    return True


def _field_matches(selector: str, obj: dict[str, Any]) -> bool:
    meta = obj.get("metadata", {})
    for part in filter(None, selector.split(",")):
        key, _, value = part.partition("=")
        key, neg = (key[:-1], True) if key.endswith("!") else (key, False)
        actual = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}.get(key)
        if (actual == value.lstrip("=")) == neg:
            return False
    return True


def _matches(request: rendering.Request, obj: dict[str, Any]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    label_sel = request.params.get("labelSelector")
    field_sel = request.params.get("fieldSelector")
    return (not label_sel or selector_matches(label_sel, labels)) and (
        not field_sel or _field_matches(field_sel, obj))


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus what kopf and a real API server's clients rely on (see the module docstring)."""

    _versions = itertools.count(1)
    # Set before declare_resources(): serve custom resources only once their CRD exists, and refuse to
    # create anything in a namespace that does not exist (what a fresh API server does).
    strict = False

    def declare_resources(self) -> None:
        for plural, (group, version, kind, namespaced, subs) in RESOURCES.items():
            if self.strict and group not in BUILT_IN_GROUPS:
                continue
            self.resources[f"{group}/{version}/{plural}" if group else f"v1/{plural}"] = kmock.ResourceInfo(
                kind=kind, singular=kind.lower(), namespaced=namespaced, verbs=set(VERBS),
                shortnames=set(SHORT_NAMES.get(plural, ())), subresources=set(subs))
        for name in INITIAL_NAMESPACES:
            self.objects[(self.__resource("namespaces"), None, name)] = {
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": _now(),
                             "resourceVersion": str(next(self._versions)),
                             "labels": {"kubernetes.io/metadata.name": name}},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}

    def _served_by_crd(self, crd: dict[str, Any], serve: bool) -> None:
        """Discovery follows CRDs: their resources appear when they are created and go when deleted."""
        spec, names = crd.get("spec") or {}, (crd.get("spec") or {}).get("names") or {}
        for entry in spec.get("versions") or []:
            key = f"{spec.get('group')}/{entry.get('name')}/{names.get('plural')}"
            if not serve:
                self.resources.pop(key, None)
                continue
            self.resources[key] = kmock.ResourceInfo(
                kind=names.get("kind"), singular=names.get("singular"),
                namespaced=spec.get("scope") == "Namespaced", verbs=set(VERBS),
                shortnames=set(names.get("shortNames") or ()), categories=set(names.get("categories") or ()),
                subresources=set((entry.get("subresources") or {}).keys()))

    def _crd(self, plural: str) -> dict[str, Any] | None:
        group = RESOURCES[plural][0]
        if group in BUILT_IN_GROUPS:
            return None
        stored = self._stored("customresourcedefinitions", None, f"{plural}.{group}")
        return None if stored is None else dict(stored.raw)

    def _refuse_namespace(self, namespace: str) -> aiohttp.web.Response | None:
        stored = self._stored("namespaces", None, namespace)
        if stored is None:
            return _status(404, "NotFound", f'namespaces "{namespace}" not found') if self.strict else None
        if stored.raw["metadata"].get("deletionTimestamp"):
            return _status(403, "Forbidden", f"unable to create new content in namespace {namespace} "
                                             "because it is being terminated")
        return None

    def _admit(self, request: rendering.Request, plural: str, obj: dict[str, Any]
               ) -> tuple[dict[str, Any], aiohttp.web.Response | None]:
        """A custom resource is defaulted, pruned and validated against its CRD's schema (422 if invalid)."""
        crd = self._crd(plural)
        schema = None if crd is None else version_schema(crd, RESOURCES[plural][1])
        if schema is None:
            return obj, None
        strict = request.params.get("fieldValidation") == "Strict"
        admitted, causes = admit(schema, obj, strict=strict)
        if not causes:
            return admitted, None
        group, kind, name = RESOURCES[plural][0], RESOURCES[plural][2], obj["metadata"].get("name")
        message = f'{kind}.{group} "{name}" is invalid: ' + ", ".join(c.message for c in causes)
        return obj, aiohttp.web.json_response(
            {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": 422,
             "reason": "Invalid", "message": message,
             "details": {"name": name, "group": group, "kind": kind,
                         "causes": [c.as_dict() for c in causes]}},
            status=422)

    def _plural(self, request: rendering.Request) -> str | None:
        res = request.resource
        if res is None or res.plural not in RESOURCES:
            return None
        return str(res.plural)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        try:
            return await self._handle_known(request)
        except KubernetesNotFoundError:
            # A 404 is an answer, not a fault of the emulator: kmock would keep it and raise it at exit.
            return _status(404, "NotFound", "the server could not find the requested resource")

    async def _handle_known(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        plural = self._plural(request)
        if plural is None:
            return await super()._handle(request)
        if self.strict and RESOURCES[plural][0] not in BUILT_IN_GROUPS and self._crd(plural) is None:
            return _status(404, "NotFound", "the server could not find the requested resource")
        if request.method == kmock.method.POST and request.name is None:
            return await self._create(request, plural)
        if request.name is not None and request.action == kmock.action.FETCH:
            # Answered here: kmock would raise, and keep the 404 as a server error for its exit.
            found = self._stored(plural, request.namespace, request.name)
            if found is None:
                return _status(404, "NotFound", f'{_qualified(plural)} "{request.name}" not found')
            return aiohttp.web.json_response(found.raw)
        if request.name is not None and request.method in (kmock.method.PATCH, kmock.method.PUT):
            return await self._update(request, plural)
        if request.name is not None and request.method == kmock.method.DELETE:
            return await self._delete(request, plural)
        return await super()._handle(request)

    # -- mutations (under the lock, each emits one watch event) --------------------------------------

    def _stored(self, plural: str, namespace: str | None, name: str) -> k8s_dicts.Object | None:
        key = (self.__resource(plural), namespace, name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key]
        return None

    @staticmethod
    def __resource(plural: str) -> kmock.resource:
        group, version, *_ = RESOURCES[plural]
        return kmock.resource(group=group, version=version, plural=plural)

    async def _emit(self, plural: str, kind: str, obj: dict[str, Any]) -> None:
        await self._buses[self.__resource(plural)].put({"type": kind, "object": obj})

    async def _create(self, request: rendering.Request, plural: str) -> aiohttp.web.StreamResponse:
        _, _, kind, namespaced, subs = RESOURCES[plural]
        obj = copy.deepcopy(request.data) if isinstance(request.data, dict) else None
        if obj is None:
            return _status(400, "BadRequest", "the body must be a JSON object")
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            return _status(422, "Invalid", "metadata.name: Required value")
        namespace = (request.namespace or meta.get("namespace") or "default") if namespaced else None
        if namespace:
            meta["namespace"] = namespace
        if "status" in subs:
            obj.pop("status", None)  # the main resource ignores status when the subresource exists
        obj["apiVersion"], obj["kind"] = _api_version(plural), kind
        if plural == "namespaces":
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj["status"] = {"phase": "Active"}
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        elif plural == "customresourcedefinitions":
            obj["status"] = _crd_status(obj)
        obj, refused = self._admit(request, plural, obj)
        if refused is not None:
            return refused
        meta = obj["metadata"]
        meta.update(uid=str(uuid.uuid4()), resourceVersion=str(next(self._versions)), generation=1,
                    creationTimestamp=_now())
        async with self._lock:
            refused = self._refuse_namespace(namespace) if namespace else None
            if refused is not None:
                return refused
            if self._stored(plural, namespace, meta["name"]) is not None:
                return _status(409, "AlreadyExists", f'{plural} "{meta["name"]}" already exists')
            key = (self.__resource(plural), namespace, meta["name"])
            if key in self.objects:
                self.objects[key].create(obj)
            else:
                self.objects[key] = obj
            await self._emit(plural, "ADDED", obj)
            if plural == "customresourcedefinitions":
                self._served_by_crd(obj, serve=True)
        return aiohttp.web.json_response(obj, status=201)

    async def _update(self, request: rendering.Request, plural: str) -> aiohttp.web.StreamResponse:
        subs = RESOURCES[plural][4]
        content_type = request.headers.get("Content-Type", "")
        if "strategic-merge-patch" in content_type and RESOURCES[plural][0] not in BUILT_IN_GROUPS:
            return _status(415, "UnsupportedMediaType",
                           f"the body of the request was in an unknown format - accepted media types include:"
                           f" application/json-patch+json, application/merge-patch+json ({content_type})")
        async with self._lock:
            stored = self._stored(plural, request.namespace, str(request.name))
            if stored is None:
                return _status(404, "NotFound", f'{_qualified(plural)} "{request.name}" not found')
            old = copy.deepcopy(stored.raw)
            try:
                if request.method == kmock.method.PUT:
                    new = copy.deepcopy(request.data)
                elif "json-patch" in content_type:
                    new = dict(dicts.patch_dict(old, list(request.data)))
                else:
                    new = dict(dicts.patch_dict(old, dict(request.data or {})))
            except Exception as exc:  # a bad patch is the client's mistake: answer it like the API does
                return _status(422, "Invalid", f"cannot apply the patch: {exc}")
            new = copy.deepcopy(new)
            sent = request.data if isinstance(request.data, dict) else {}
            want_rv = (sent.get("metadata") or {}).get("resourceVersion")
            if want_rv and want_rv != old["metadata"]["resourceVersion"]:
                return _status(409, "Conflict", "the object has been modified; please apply your changes"
                                                " to the latest version and try again")
            if "status" in subs:
                if request.subresource == "status":
                    new = {**old, "status": new.get("status")}
                elif "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
            meta = new.setdefault("metadata", {})
            for fixed in ("uid", "creationTimestamp", "namespace", "name", "generation", "deletionTimestamp"):
                if fixed in old["metadata"]:
                    meta[fixed] = old["metadata"][fixed]
            new["apiVersion"], new["kind"] = old.get("apiVersion"), old.get("kind")
            new, refused = self._admit(request, plural, new)
            if refused is not None:
                return refused
            meta = new["metadata"]
            if {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
                    k: v for k, v in old.items() if k not in ("metadata", "status")}:
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
            unchanged_rv = {**old["metadata"], "resourceVersion": meta.get("resourceVersion")}
            if new == {**old, "metadata": unchanged_rv}:
                return aiohttp.web.json_response(old)  # a no-op patch changes nothing, not even the version
            meta["resourceVersion"] = str(next(self._versions))
            stored.history.append(new)
            await self._emit(plural, "MODIFIED", new)
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                await self._remove(plural, request.namespace, str(request.name))
        return aiohttp.web.json_response(new)

    async def _delete(self, request: rendering.Request, plural: str) -> aiohttp.web.StreamResponse:
        async with self._lock:
            if self._stored(plural, request.namespace, str(request.name)) is None:
                return _status(404, "NotFound", f'{_qualified(plural)} "{request.name}" not found')
            obj = await self._delete_locked(plural, request.namespace, str(request.name))
        return aiohttp.web.json_response(obj)

    async def _delete_locked(self, plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        """Delete as the API server does: only mark it while finalizers remain, else remove it now."""
        stored = self._stored(plural, namespace, name)
        assert stored is not None, (plural, namespace, name)
        obj = copy.deepcopy(stored.raw)
        meta = obj["metadata"]
        # A namespace is finalized by spec.finalizers: the namespace controller empties it first.
        if meta.get("finalizers") or plural == "namespaces":
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = _now()
                meta["resourceVersion"] = str(next(self._versions))
                if plural == "namespaces":
                    obj["status"] = {**(obj.get("status") or {}), "phase": "Terminating"}
                stored.history.append(obj)
                await self._emit(plural, "MODIFIED", obj)
                if plural == "namespaces":
                    await self._empty_namespace(name)
            return obj
        await self._remove(plural, namespace, name)
        return obj

    async def _empty_namespace(self, namespace: str) -> None:
        for (res, ns, name), stored in list(self.objects.items()):
            live = not stored.deleted and res.plural in RESOURCES
            if ns == namespace and live and self._stored(str(res.plural), ns, name) is not None:
                await self._delete_locked(str(res.plural), ns, name)
        await self._reap_namespace(namespace)

    async def _reap_namespace(self, namespace: str) -> None:
        """A terminating namespace goes away once nothing is left in it."""
        stored = self._stored("namespaces", None, namespace)
        if stored is None or not stored.raw["metadata"].get("deletionTimestamp"):
            return
        if any(ns == namespace and not obj.deleted for (_, ns, _), obj in self.objects.items()):
            return
        await self._remove("namespaces", None, namespace)

    async def _remove(self, plural: str, namespace: str | None, name: str) -> None:
        """Delete for real, then garbage-collect the dependents (what kube-controller-manager does)."""
        stored = self._stored(plural, namespace, name)
        if stored is None:
            return
        obj = stored.raw
        stored.delete()
        await self._emit(plural, "DELETED", obj)
        uid = obj["metadata"]["uid"]
        for (res, ns, child_name), child in list(self.objects.items()):
            if child.deleted or res.plural not in RESOURCES:
                continue
            owners = child.raw.get("metadata", {}).get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in owners):
                await self._delete_locked(str(res.plural), ns, child_name)
        if plural == "customresourcedefinitions":
            await self._remove_custom_resources(obj)
        if namespace is not None:
            await self._reap_namespace(namespace)

    async def _remove_custom_resources(self, crd: dict[str, Any]) -> None:
        """A deleted CRD takes its objects with it, and (strictly) its resources leave discovery."""
        plural = (crd.get("spec") or {}).get("names", {}).get("plural")
        for (res, ns, name), stored in list(self.objects.items()):
            ours = res.plural == plural and res.group == crd["spec"].get("group")
            if ours and plural in RESOURCES and not stored.deleted:
                await self._delete_locked(plural, ns, name)
        if self.strict:
            self._served_by_crd(crd, serve=False)

    # -- reads: kmock's, plus selectors and kinds ----------------------------------------------------

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        result = await super()._serve_list(request)
        plural = self._plural(request)
        if plural is None or not isinstance(result, dict):
            return result
        items = [obj for obj in result.get("items", []) if _matches(request, obj)]
        return {"apiVersion": _api_version(plural), "kind": RESOURCES[plural][2] + "List",
                "metadata": {"resourceVersion": str(next(self._versions))}, "items": items}

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        async for event in super()._serve_watch(request):
            if isinstance(event, dict) and not _matches(request, event.get("object") or {}):
                continue
            yield event


def _crd_status(crd: dict[str, Any]) -> dict[str, Any]:
    """What the apiextensions controller writes at once on a valid CRD: its names are accepted and served."""
    now = _now()
    return {"acceptedNames": dict((crd.get("spec") or {}).get("names") or {}),
            "storedVersions": [v["name"] for v in (crd.get("spec") or {}).get("versions") or []
                               if v.get("storage")],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class KubeAPI:
    """The emulator served from a background thread, with blocking HTTP helpers for tests."""

    def __init__(self, directory: Path, strict: bool = False) -> None:
        self.emulator = Emulator()
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
        self.http = httpx.Client(base_url=self.url, timeout=10)

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

    def patch(self, plural: str, namespace: str | None, name: str, patch: dict[str, Any] | list[Any],
              status: bool = False) -> dict[str, Any]:
        kind = "json-patch+json" if isinstance(patch, list) else "merge-patch+json"
        return self._check(self.http.patch(
            _path(plural, namespace, name, "status" if status else None), content=json.dumps(patch),
            headers={"Content-Type": f"application/{kind}"}))

    def delete(self, plural: str, namespace: str | None, name: str) -> None:
        self._check(self.http.delete(_path(plural, namespace, name)))

    def events(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.list("events", namespace)

    @staticmethod
    def wait_for(fn: Callable[[], T], timeout: float = 20.0, interval: float = 0.1, what: str = "") -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = fn()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or fn}: last {value!r}")
            time.sleep(interval)


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


class Process:
    """A subprocess whose output goes to a file (a pipe could fill and block it)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = log.open("wb")
        self.popen = subprocess.Popen(args, env=env, stdout=self._file, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
        self._file.close()


def _executable(name: str) -> str:
    found = Path(sys.executable).parent / name
    return str(found) if found.exists() else (shutil.which(name) or name)


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

        def alive() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"the operator exited ({proc.popen.returncode}):\n{proc.logs()[-4000:]}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            KubeAPI.wait_for(alive, timeout=30, interval=0.2, what="the operator's liveness endpoint")
        except AssertionError:
            raise AssertionError(f"the operator did not come up:\n{proc.logs()[-4000:]}") from None
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
