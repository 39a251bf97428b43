"""The level check compares children with what the watches show: no GET when the index knows the child."""

from __future__ import annotations

import asyncio
import copy
from typing import Any, cast

from tts_operator.api import Api
from tts_operator.builders import Images, Owner, build_children
from tts_operator.kube import KubeApiError
from tts_operator.reconcile import apply_children, observed_part
from tts_operator.spec import parse_spec

IMAGES = Images(runtime="rt:1", agent="agent:1")


class RecordingApi:
    """An API server holding `objects` (by kind and name); records every call."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.objects = objects
        self.calls: list[tuple[str, str]] = []

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("GET", kind))
        return copy.deepcopy(self.objects.get((kind, name)))

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("POST", manifest["kind"]))
        key = (manifest["kind"], manifest["metadata"]["name"])
        if key in self.objects:
            raise KubeApiError(409, "already exists")
        self.objects[key] = copy.deepcopy(manifest)
        return manifest

    async def patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any], sub: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(("PATCH", kind))
        return {}


def owner(replicas: int = 1) -> Owner:
    spec = parse_spec({"model": {"name": "hibari"}, "replicas": replicas}, "voice")
    return Owner(name="voice", namespace="default", uid="uid-1", spec=spec)


def known(children: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for child in children:
        watched = {
            **child,
            "status": {"big": "x" * 100},
            "metadata": {**child["metadata"], "resourceVersion": "7", "managedFields": [{}]},
        }
        out.setdefault(child["kind"], []).append(observed_part(watched))
    return out


def test_children_the_index_shows_as_they_should_be_cost_no_request() -> None:
    children = build_children(owner(), IMAGES)
    api = RecordingApi({(c["kind"], c["metadata"]["name"]): c for c in children})
    done = asyncio.run(apply_children(cast(Api, api), owner(), IMAGES, known(children)))
    assert set(done.values()) == {"unchanged"} and len(done) == 5
    assert api.calls == []


def test_a_drifted_child_is_patched_and_a_missing_one_posted_without_reads() -> None:
    children = build_children(owner(replicas=1), IMAGES)
    seen = known([c for c in children if c["kind"] != "Role"])
    api = RecordingApi({})
    done = asyncio.run(apply_children(cast(Api, api), owner(replicas=3), IMAGES, seen))
    assert done["Deployment/voice"] == "patched"
    role = next(f"Role/{c['metadata']['name']}" for c in children if c["kind"] == "Role")
    assert done[role] == "created"
    assert ("GET", "Deployment") not in api.calls and ("POST", "Role") in api.calls
    assert not any(method == "GET" for method, _ in api.calls)


def test_a_child_the_index_does_not_show_yet_is_compared_after_a_conflict() -> None:
    """The index lags behind our own POSTs: a 409 means it exists; it is read once and compared."""
    children = build_children(owner(replicas=1), IMAGES)
    api = RecordingApi({(c["kind"], c["metadata"]["name"]): c for c in children})
    done = asyncio.run(apply_children(cast(Api, api), owner(replicas=2), IMAGES, {}))
    assert done["Deployment/voice"] == "patched"
    assert api.calls.count(("GET", "Deployment")) == 1 and ("PATCH", "Deployment") in api.calls


def test_without_an_index_every_child_is_read() -> None:
    api = RecordingApi({})
    asyncio.run(apply_children(cast(Api, api), owner(), IMAGES))
    assert sum(method == "GET" for method, _ in api.calls) == 5


def test_observed_part_drops_status_and_managed_fields_only() -> None:
    body = {
        "kind": "Service",
        "spec": {"ports": [1]},
        "status": {"x": 1},
        "metadata": {"name": "a", "labels": {"l": "v"}, "managedFields": [{}], "resourceVersion": "3"},
    }
    assert observed_part(body) == {
        "kind": "Service",
        "spec": {"ports": [1]},
        "metadata": {"name": "a", "labels": {"l": "v"}, "resourceVersion": "3"},
    }
