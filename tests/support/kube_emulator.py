"""An in-memory Kubernetes API server: kmock's emulator made faithful enough for kopf and our clients.

`Emulator` (served by `support.kube.KubeAPI`) is a `kmock.KubernetesEmulator` that also: stamps `uid`/
`resourceVersion`/`generation`/`creationTimestamp` and the URL's namespace on create; applies PATCH as JSON
patch, merge patch or strategic merge patch (approximated as a merge patch: lists are replaced, not merged by
key; 415 on custom resources, as the API server answers); serves PUT; isolates the `status` subresource (the
main resource ignores `status`, `/status` only changes it); bumps `generation` when anything but
metadata/status changes; honours `metadata.resourceVersion` preconditions (409); garbage-collects children by
`ownerReferences` when their owner is deleted; filters lists and watches by `labelSelector` and
`fieldSelector` (metadata.name/namespace); puts `kind` in lists; answers a missing object or resource with a
Kubernetes 404 Status (`deployments.apps "x" not found`).
Namespaces are cluster-scoped objects (`/api/v1/namespaces[/NAME]`, which kmock alone cannot parse):
`default`, `kube-system`, `kube-public`, `kube-node-lease` exist; deleting one makes it `Terminating`
(creating in it is then 403), deletes everything in it, and removes it once no finalizer holds an object.
A created CRD is `Established` at once and its resources appear in discovery; deleting it deletes its
objects. While a custom resource's CRD exists, every write of it is admitted like the API server does
(`support.crd_schema`): schema `default`s applied, unknown fields pruned (422 with
`?fieldValidation=Strict`), the openAPIV3Schema and the CEL rules checked: 422 `Invalid` with
`details.causes` naming the field. `nodes` is served and empty: a bare API server without kubelets.
Strict mode (`strict = True` before `declare_resources()`, what the e2e suite runs against) is a fresh API
server: a custom resource is 404 until its CRD is created, and creating in a namespace that does not exist
is 404. The default mode stays lenient for the operator's tests (TTSService always served, any namespace).
"""

from __future__ import annotations

import copy
import datetime
import itertools
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import kmock
from kmock._internal import dicts, k8s_dicts, parsing, rendering
from kmock._internal.k8s import KubernetesNotFoundError

from support.crd_schema import admit, version_schema

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
