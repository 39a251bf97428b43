"""The real operator (`tts-operator run`) against the emulated Kubernetes API: children, status, policy."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import kmock
import pytest

from support.kube import KubeAPI, Process, make_pod
from tts_operator.builders import labels

pytestmark = pytest.mark.slow

SERVICE = {
    "apiVersion": "tts.residency.dev/v1alpha1", "kind": "TTSService",
    "metadata": {"name": "voice", "namespace": "default"},
    "spec": {"model": {"name": "hibari"}, "replicas": 2, "port": 8080,
             "residency": {"offloadAfterUse": True, "idleOffloadSeconds": 600, "idleReleaseSeconds": 3600,
                           "pinned": False, "priority": 0}},
}
FAST = {"RESIDENCY_STATUS_SECONDS": "0.5", "RESIDENCY_RECHECK_SECONDS": "2"}


def _report(state: str, vram: int) -> str:
    return json.dumps({"models": [{"name": "hibari", "state": state, "vramBytes": vram, "leases": 0,
                                   "lastUsed": "2026-01-01T00:00:00Z"}],
                       "gpu": None, "updated": "2026-01-01T00:00:01Z"})


def test_apply_creates_children_with_status_and_policy(
        kube_api: KubeAPI, run_operator: Callable[..., Process]) -> None:
    run_operator(**FAST)
    kube_api.create("ttsservices", SERVICE)
    deployment = kube_api.wait_for(lambda: kube_api.get("deployments", "default", "voice"), what="deployment")
    owner_uid = kube_api.get("ttsservices", "default", "voice")["metadata"]["uid"]  # type: ignore[index]
    for plural, name in [("services", "voice"), ("serviceaccounts", "voice-agent"), ("roles", "voice-agent"),
                         ("rolebindings", "voice-agent")]:
        child = kube_api.wait_for(lambda p=plural, n=name: kube_api.get(p, "default", n), what=name)
        assert child["metadata"]["ownerReferences"][0]["uid"] == owner_uid
    assert [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]] == ["runtime", "agent"]

    # Two pods appear (as the Deployment controller would make them); agents publish residency.
    kube_api.create("pods", make_pod("voice", "voice-a", annotations={
        "tts.residency.dev/residency": _report("gpu", 3 * 2**30)}))
    kube_api.create("pods", make_pod("voice", "voice-b", annotations={
        "tts.residency.dev/residency": _report("cpu", 0)}))

    def status() -> dict[str, Any] | None:
        obj = kube_api.get("ttsservices", "default", "voice") or {}
        st: dict[str, Any] = obj.get("status") or {}
        return st if st.get("pods", {}).get("gpu") == 1 else None

    st = kube_api.wait_for(status, what="status counts")
    assert st["pods"] == {"gpu": 1, "cpu": 1, "unloaded": 0, "failed": 0}
    assert st["vram"] == "3Gi" and st["ready"] == "2/2"
    assert st["endpoint"] == "http://voice.default.svc.cluster.local:8080"
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"

    # New pods got the policy; an edit of spec.residency reaches them without touching the template.
    def policies() -> list[dict[str, Any]]:
        notes = [p["metadata"].get("annotations") or {} for p in kube_api.list("pods", "default")]
        return [json.loads(n.get("tts.residency.dev/policy") or "null") for n in notes]

    kube_api.wait_for(lambda: all(p and p["priority"] == 0 for p in policies()), what="initial policy")
    template = kube_api.get("deployments", "default", "voice")["spec"]["template"]  # type: ignore[index]
    edit = {"spec": {"residency": {"priority": 7, "pinned": True}}}
    kube_api.patch("ttsservices", "default", "voice", edit)
    kube_api.wait_for(lambda: all(p and p["priority"] == 7 and p["pinned"] for p in policies()),
                      what="edited policy on every pod")
    assert kube_api.get("deployments", "default", "voice")["spec"]["template"] == template  # type: ignore[index]

    # A deleted child comes back; a hand-edited one is put back.
    kube_api.delete("services", "default", "voice")
    kube_api.wait_for(lambda: kube_api.get("services", "default", "voice"), what="service recreated")
    kube_api.patch("deployments", "default", "voice", {"spec": {"replicas": 5}})
    kube_api.wait_for(
        lambda: kube_api.get("deployments", "default", "voice")["spec"]["replicas"] == 2,  # type: ignore[index]
        what="replicas put back")


def test_bad_spec_gets_a_clear_message(kube_api: KubeAPI, run_operator: Callable[..., Process]) -> None:
    run_operator(**FAST)
    bad = json.loads(json.dumps(SERVICE))
    bad["spec"]["model"] = {"name": "hibari", "backend": "plugin"}
    bad["spec"]["replicas"] = -1
    kube_api.create("ttsservices", bad)

    def condition() -> dict[str, Any] | None:
        obj = kube_api.get("ttsservices", "default", "voice") or {}
        conds = (obj.get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == "Ready" and c["reason"] == "InvalidSpec"), None)

    ready = kube_api.wait_for(condition, what="InvalidSpec condition")
    assert ready["status"] == "False"
    assert "spec.replicas" in ready["message"] and "model.factory" in ready["message"]
    assert kube_api.get("deployments", "default", "voice") is None


CHILDREN = [("deployments", "voice"), ("services", "voice"), ("serviceaccounts", "voice-agent"),
            ("roles", "voice-agent"), ("rolebindings", "voice-agent")]
SETTLE = 1.5  # seconds given to the operator before asserting it did nothing more (its passes take ms)


def _operator_requests(kube_api: KubeAPI, since: int = 0) -> list[Any]:
    """Requests the operator sent, from the emulator's request history (the test's own go through httpx)."""
    return [r for r in list(kube_api.emulator)[since:]
            if not str(r.headers.get("User-Agent", "")).startswith("python-httpx")]


def _child_posts(requests: list[Any]) -> Counter[tuple[str, str]]:
    return Counter((str(r.resource.plural), str((r.data or {}).get("metadata", {}).get("name")))
                   for r in requests if r.method == kmock.method.POST and r.resource is not None
                   and r.resource.plural != "events")


def _service_in(namespace: str) -> dict[str, Any]:
    return {**SERVICE, "metadata": {"name": "voice", "namespace": namespace}}


def _wait_children(kube_api: KubeAPI, namespace: str = "default") -> None:
    for plural, name in CHILDREN:
        kube_api.wait_for(lambda p=plural, n=name: kube_api.get(p, namespace, n), what=f"{plural}/{name}")


def test_each_child_is_posted_exactly_once(kube_api: KubeAPI, run_operator: Callable[..., Process]) -> None:
    """The create handler makes the children; the child watch sees them appear and must not race it."""
    run_operator(**FAST)
    kube_api.create("ttsservices", SERVICE)
    _wait_children(kube_api)
    time.sleep(SETTLE)
    assert _child_posts(_operator_requests(kube_api)) == {child: 1 for child in CHILDREN}


def _three_services_applied(kube_api: KubeAPI, run_operator: Callable[..., Process]) -> tuple[list[str], int]:
    """Three TTSServices with all their children, settled; requests after the mark are re-creations."""
    run_operator(**FAST)
    namespaces = [f"ns-{i}" for i in range(3)]
    for namespace in namespaces:
        kube_api.create("ttsservices", _service_in(namespace))
    for namespace in namespaces:
        _wait_children(kube_api, namespace)
    time.sleep(SETTLE)
    return namespaces, len(list(kube_api.emulator))


def test_children_of_a_deleted_service_stay_deleted(
        kube_api: KubeAPI, run_operator: Callable[..., Process]) -> None:
    """The garbage collector deletes the children; their DELETED events can come before the TTSService
    leaves the operator's index, and must not bring back children owned by a deleted TTSService."""
    namespaces, before = _three_services_applied(kube_api, run_operator)
    for namespace in namespaces:
        kube_api.delete("ttsservices", namespace, "voice")
    time.sleep(SETTLE)
    assert _child_posts(_operator_requests(kube_api, since=before)) == {}
    left = [(ns, p, n) for ns in namespaces for p, n in CHILDREN if kube_api.get(p, ns, n) is not None]
    assert left == []


def test_a_service_deleted_and_applied_again_gets_its_children_once(
        kube_api: KubeAPI, run_operator: Callable[..., Process]) -> None:
    """Delete and re-apply at once: the old children's DELETED events arrive while the new TTSService is
    being created. Each new child is POSTed once (by the create handler), owned by the new TTSService."""
    namespaces, before = _three_services_applied(kube_api, run_operator)
    uids = {}
    for namespace in namespaces:
        kube_api.delete("ttsservices", namespace, "voice")
        # The TTSService goes once the operator has released it (kopf's finalizer: it has timers).
        kube_api.wait_for(lambda ns=namespace: kube_api.get("ttsservices", ns, "voice") is None, what="gone")
        created = kube_api.create("ttsservices", _service_in(namespace))
        uids[namespace] = created["metadata"]["uid"]
    for namespace in namespaces:
        _wait_children(kube_api, namespace)
    time.sleep(SETTLE)
    posts = Counter()
    for r in _operator_requests(kube_api, since=before):
        if r.method == kmock.method.POST and r.resource is not None and r.resource.plural != "events":
            posts[(r.namespace, str(r.resource.plural), r.data["metadata"]["name"])] += 1
    assert posts == {(ns, p, n): 1 for ns in namespaces for p, n in CHILDREN}
    owners = {(ns, p): kube_api.get(p, ns, n)["metadata"]["ownerReferences"][0]["uid"]  # type: ignore[index]
              for ns in namespaces for p, n in CHILDREN}
    assert owners == {(ns, p): uids[ns] for ns in namespaces for p, _ in CHILDREN}


def test_a_child_of_a_deleted_namesake_is_waited_for_not_given_up_on(
        kube_api: KubeAPI, run_operator: Callable[..., Process]) -> None:
    """On a cluster the garbage collector removes a deleted TTSService's children a moment later, so a
    TTSService applied again at once can find one. The operator waits for it to go, then creates its own."""
    run_operator(RESIDENCY_STATUS_SECONDS="0.5")  # the level check (30 s) is not what must put it right
    gone = {"apiVersion": "tts.residency.dev/v1alpha1", "kind": "TTSService", "name": "voice",
            "uid": str(uuid.uuid4()), "controller": True}
    stale = {"apiVersion": "v1", "kind": "Service", "spec": {"ports": [{"port": 8080}]},
             "metadata": {"name": "voice", "namespace": "default", "labels": labels("voice"),
                          "ownerReferences": [gone]}}
    kube_api.create("services", stale)
    uid = kube_api.create("ttsservices", SERVICE)["metadata"]["uid"]
    time.sleep(SETTLE)  # the operator has met the stale Service by now
    kube_api.delete("services", "default", "voice")  # what the garbage collector does
    for plural, name in CHILDREN:
        child = kube_api.wait_for(lambda p=plural, n=name: kube_api.get(p, "default", n), timeout=10,
                                  what=f"{plural}/{name}")
        assert child["metadata"]["ownerReferences"][0]["uid"] == uid
