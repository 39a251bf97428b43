"""The level check compares children with what the watches show: no GET when the index knows the child
(the operator's client against the real API server, every call it makes recorded)."""

from __future__ import annotations

from typing import Any

from support.cluster import Cluster
from support.recording_api import RecordingApi
from tts_operator.builders import Images, Owner, build_children
from tts_operator.reconcile import apply_children, observed_part
from tts_operator.spec import parse_spec

IMAGES = Images(runtime="rt:1", agent="agent:1")
KINDS = {
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Service": "services",
    "Deployment": "deployments",
}
PATHS = {
    "ServiceAccount": "/api/v1",
    "Role": "/apis/rbac.authorization.k8s.io/v1",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1",
    "Service": "/api/v1",
    "Deployment": "/apis/apps/v1",
}


def owner(namespace: str, uid: str, replicas: int = 1) -> Owner:
    spec = parse_spec({"model": {"name": "hibari"}, "replicas": replicas}, "voice")
    return Owner(name="voice", namespace=namespace, uid=uid, spec=spec)


def watched(
    cluster: Cluster, namespace: str, uid: str, leave_out: str = ""
) -> dict[str, list[dict[str, Any]]]:
    """The children as the operator's index holds them (read from the API server, kept as the index keeps
    them), by kind; `leave_out`: a kind the index does not show."""
    out: dict[str, list[dict[str, Any]]] = {}
    for child in build_children(owner(namespace, uid), IMAGES):
        kind, name = child["kind"], child["metadata"]["name"]
        if kind == leave_out:
            continue
        status, body = cluster.request("GET", f"{PATHS[kind]}/namespaces/{namespace}/{KINDS[kind]}/{name}")
        assert status == 200, body
        out.setdefault(kind, []).append(observed_part(body))
    return out


async def test_children_the_index_shows_as_they_should_be_cost_no_request(
    api: RecordingApi, kube_cluster: Cluster, namespace: str, uid: str
) -> None:
    await apply_children(api, owner(namespace, uid), IMAGES)
    seen, api.calls = watched(kube_cluster, namespace, uid), []
    done = await apply_children(api, owner(namespace, uid), IMAGES, seen)
    assert set(done.values()) == {"unchanged"} and len(done) == 5
    assert api.calls == []


async def test_a_drifted_child_is_patched_and_a_missing_one_posted_without_reads(
    api: RecordingApi, kube_cluster: Cluster, namespace: str, uid: str
) -> None:
    await apply_children(api, owner(namespace, uid, replicas=1), IMAGES)
    role = next(
        c["metadata"]["name"] for c in build_children(owner(namespace, uid), IMAGES) if c["kind"] == "Role"
    )
    status, body = kube_cluster.request("DELETE", f"{PATHS['Role']}/namespaces/{namespace}/roles/{role}")
    assert status == 200, body
    seen, api.calls = watched(kube_cluster, namespace, uid, leave_out="Role"), []
    done = await apply_children(api, owner(namespace, uid, replicas=3), IMAGES, seen)
    assert done["Deployment/voice"] == "patched" and done[f"Role/{role}"] == "created"
    assert sorted(api.calls) == [("PATCH", "Deployment"), ("POST", "Role")]
    status, deployment = kube_cluster.request(
        "GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/voice"
    )
    assert status == 200 and deployment["spec"]["replicas"] == 3, deployment


async def test_a_child_the_index_does_not_show_yet_is_compared_after_a_conflict(
    api: RecordingApi, namespace: str, uid: str
) -> None:
    """A child the index does not show, made by someone the operator did not hear of: a 409 means it
    exists; it is read once and compared (and patched, here)."""
    await apply_children(api, owner(namespace, uid, replicas=1), IMAGES)
    api.calls = []
    done = await apply_children(api, owner(namespace, uid, replicas=2), IMAGES, {})
    assert done["Deployment/voice"] == "patched"
    assert api.calls.count(("GET", "Deployment")) == 1 and ("PATCH", "Deployment") in api.calls
    assert api.calls.count(("POST", "Deployment")) == 1


async def test_without_an_index_every_child_is_read(api: RecordingApi, namespace: str, uid: str) -> None:
    done = await apply_children(api, owner(namespace, uid), IMAGES)
    assert set(done.values()) == {"created"}
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
