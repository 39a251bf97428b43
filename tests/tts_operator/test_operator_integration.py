"""The real operator (`tts-operator run`) against the real API server: children, status, policy."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from support.kube import KubeAPI, OperatorProcess
from tts_operator.builders import labels

pytestmark = pytest.mark.slow

SERVICE = {
    "apiVersion": "tts.residency.dev/v1alpha1",
    "kind": "TTSService",
    "metadata": {"name": "voice"},
    "spec": {
        "model": {"name": "hibari"},
        "replicas": 2,
        "port": 8080,
        "residency": {
            "offloadAfterUse": True,
            "idleOffloadSeconds": 600,
            "idleReleaseSeconds": 3600,
            "pinned": False,
            "priority": 0,
        },
    },
}
RESIDENCY = "tts.residency.dev/residency"
FAST = {"RESIDENCY_STATUS_SECONDS": "0.5", "RESIDENCY_RECHECK_SECONDS": "2"}


def _report(state: str, vram: int) -> str:
    return json.dumps(
        {
            "models": [
                {
                    "name": "hibari",
                    "state": state,
                    "vramBytes": vram,
                    "leases": 0,
                    "lastUsed": "2026-01-01T00:00:00Z",
                }
            ],
            "gpu": None,
            "updated": "2026-01-01T00:00:01Z",
        }
    )


def test_apply_creates_children_with_status_and_policy(
    kube_api: KubeAPI, run_operator: Callable[..., OperatorProcess]
) -> None:
    run_operator(**FAST)
    ns = kube_api.namespace
    kube_api.create("ttsservices", SERVICE)
    deployment = kube_api.wait_for(lambda: kube_api.get("deployments", ns, "voice"), what="deployment")
    owner_uid = kube_api.get("ttsservices", ns, "voice")["metadata"]["uid"]  # type: ignore[index]
    for plural, name in [
        ("services", "voice"),
        ("serviceaccounts", "voice-agent"),
        ("roles", "voice-agent"),
        ("rolebindings", "voice-agent"),
    ]:
        child = kube_api.wait_for(lambda p=plural, n=name: kube_api.get(p, ns, n), what=name)
        assert child["metadata"]["ownerReferences"][0]["uid"] == owner_uid
    assert [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]] == ["runtime", "agent"]

    # The Deployment's two pods run (as a scheduler and kubelet would make them); agents publish residency.
    pods = [p["metadata"]["name"] for p in kube_api.run_service_pods("voice", 2)]
    for pod, report in zip(pods, [_report("gpu", 3 * 2**30), _report("cpu", 0)], strict=True):
        kube_api.patch("pods", ns, pod, {"metadata": {"annotations": {RESIDENCY: report}}})

    # Both reports counted. Status follows the events that reach the operator, so a status of one report
    # and both pods ready can come first (the second report a moment later): wait for the one of both.
    seen: list[dict[str, Any]] = []

    def status() -> dict[str, Any] | None:
        obj = kube_api.get("ttsservices", ns, "voice") or {}
        st: dict[str, Any] = obj.get("status") or {}
        seen.append(st)
        both = st.get("pods") == {"gpu": 1, "cpu": 1, "unloaded": 0, "failed": 0}
        return st if both and st.get("ready") == "2/2" else None

    try:
        st = kube_api.wait_for(status, what="status counting both reports")
    except AssertionError as err:
        raise AssertionError(f"{err}; the last status: {seen[-1] if seen else None}") from None
    assert st["vram"] == "3Gi"
    assert st["endpoint"] == f"http://voice.{ns}.svc.cluster.local:8080"
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"

    # The pods got the policy; an edit of spec.residency reaches them without touching the template.
    def policies() -> list[dict[str, Any]]:
        notes = [p["metadata"].get("annotations") or {} for p in kube_api.list("pods", ns)]
        return [json.loads(n.get("tts.residency.dev/policy") or "null") for n in notes]

    kube_api.wait_for(lambda: all(p and p["priority"] == 0 for p in policies()), what="initial policy")
    template = kube_api.get("deployments", ns, "voice")["spec"]["template"]  # type: ignore[index]
    edit = {"spec": {"residency": {"priority": 7, "pinned": True}}}
    kube_api.patch("ttsservices", ns, "voice", edit)
    kube_api.wait_for(
        lambda: all(p and p["priority"] == 7 and p["pinned"] for p in policies()),
        what="edited policy on every pod",
    )
    assert kube_api.get("deployments", ns, "voice")["spec"]["template"] == template  # type: ignore[index]

    # A deleted child comes back; a hand-edited one is put back.
    kube_api.delete("services", ns, "voice")
    kube_api.wait_for(lambda: kube_api.get("services", ns, "voice"), what="service recreated")
    kube_api.patch("deployments", ns, "voice", {"spec": {"replicas": 5}})
    kube_api.wait_for(
        lambda: kube_api.get("deployments", ns, "voice")["spec"]["replicas"] == 2,  # type: ignore[index]
        what="replicas put back",
    )


def test_bad_spec_is_refused_by_the_server_with_every_reason(kube_api: KubeAPI) -> None:
    """The CRD's rules and bounds say what the operator's model says: a bad spec never reaches it."""
    bad = json.loads(json.dumps(SERVICE))
    bad["spec"]["model"] = {"name": "hibari", "backend": "plugin"}
    bad["spec"]["replicas"] = -1
    status, body = kube_api.cluster.request(
        "POST", f"/apis/tts.residency.dev/v1alpha1/namespaces/{kube_api.namespace}/ttsservices", bad
    )
    assert status == 422, body
    message = body["message"]
    assert "spec.replicas" in message, message
    assert "model.factory ('package.module:callable') is required" in message, message
    assert kube_api.get("ttsservices", None, "voice") is None


CHILDREN = [
    ("deployments", "voice"),
    ("services", "voice"),
    ("serviceaccounts", "voice-agent"),
    ("roles", "voice-agent"),
    ("rolebindings", "voice-agent"),
]


def _child_posts(writes: list[dict[str, Any]], codes: range = range(600)) -> Counter[tuple[str, str, str]]:
    """(namespace, plural, name) of each create the audit log saw answered with one of `codes` (every
    attempt by default), events aside."""
    refs = [
        w["objectRef"]
        for w in writes
        if w["verb"] == "create"
        and w["objectRef"]["resource"] != "events"
        and w["responseStatus"]["code"] in codes
    ]
    return Counter((r.get("namespace", ""), r["resource"], r.get("name", "")) for r in refs)


CREATED = range(200, 300)


def _service_in(namespace: str) -> dict[str, Any]:
    return {**SERVICE, "metadata": {"name": "voice", "namespace": namespace}}


def _wait_children(kube_api: KubeAPI, namespace: str) -> None:
    for plural, name in CHILDREN:
        kube_api.wait_for(lambda p=plural, n=name: kube_api.get(p, namespace, n), what=f"{plural}/{name}")


def _settled(operator: OperatorProcess, namespaces: list[str], types: tuple[str, ...] = ("ADDED",)) -> None:
    """The operator is done with the events `types` of every child in `namespaces` (it logs each)."""
    for ns in namespaces:
        for plural, name in CHILDREN:
            for event in types:
                operator.wait_logged(f"child event {event} {plural} {ns}/{name}:")


def test_each_child_is_posted_exactly_once(
    kube_api: KubeAPI, run_operator: Callable[..., OperatorProcess]
) -> None:
    """The create handler makes the children; the child watch sees them appear and must not race it."""
    operator = run_operator(**FAST)
    ns = kube_api.namespace
    mark = kube_api.cluster.audit_mark()
    kube_api.create("ttsservices", SERVICE)
    _wait_children(kube_api, ns)
    # Done: the create handler, the child watch with each child's arrival, and a level check after them.
    operator.wait_logged("Handler 'reconcile_service' succeeded")
    _settled(operator, [ns])
    checks = operator.logged("Timer 'recheck_service' succeeded")
    operator.wait_logged("Timer 'recheck_service' succeeded", checks + 1)
    assert _child_posts(kube_api.writes(operator.user, mark)) == {(ns, p, n): 1 for p, n in CHILDREN}


def _three_services_applied(
    kube_api: KubeAPI, run_operator: Callable[..., OperatorProcess]
) -> tuple[OperatorProcess, list[str], int]:
    """Three TTSServices with all their children, settled; writes after the mark are re-creations."""
    namespaces = kube_api.more_namespaces(3)
    operator = run_operator(*namespaces, **FAST)
    for namespace in namespaces:
        kube_api.create("ttsservices", _service_in(namespace))
    for namespace in namespaces:
        _wait_children(kube_api, namespace)
    _settled(operator, namespaces)
    return operator, namespaces, kube_api.cluster.audit_mark()


def test_children_of_a_deleted_service_stay_deleted(
    kube_api: KubeAPI, run_operator: Callable[..., OperatorProcess]
) -> None:
    """The garbage collector deletes the children; their DELETED events can come before the TTSService
    leaves the operator's index, and must not bring back children owned by a deleted TTSService."""
    operator, namespaces, mark = _three_services_applied(kube_api, run_operator)
    for namespace in namespaces:
        kube_api.delete("ttsservices", namespace, "voice")
    # The garbage collector deleted every child, and the operator is done with each of those deletions.
    _settled(operator, namespaces, ("DELETED",))
    assert _child_posts(kube_api.writes(operator.user, mark)) == {}
    left = [(ns, p, n) for ns in namespaces for p, n in CHILDREN if kube_api.get(p, ns, n) is not None]
    assert left == []


def test_a_service_deleted_and_applied_again_gets_its_children_once(
    kube_api: KubeAPI, run_operator: Callable[..., OperatorProcess]
) -> None:
    """Delete and re-apply at once: the old children's DELETED events arrive while the new TTSService is
    being created. Each new child is created once, owned by the new TTSService."""
    operator, namespaces, mark = _three_services_applied(kube_api, run_operator)
    uids = {}
    for namespace in namespaces:
        kube_api.delete("ttsservices", namespace, "voice")
        # The TTSService goes once the operator has released it (kopf's finalizer: it has timers).
        kube_api.wait_for(lambda ns=namespace: kube_api.get("ttsservices", ns, "voice") is None, what="gone")
        created = kube_api.create("ttsservices", _service_in(namespace))
        uids[namespace] = created["metadata"]["uid"]
    for namespace in namespaces:
        _wait_children(kube_api, namespace)
    # Done: the old children's deletions, the new ones' arrivals, and the create handler of each service.
    _settled(operator, namespaces, ("DELETED",))
    for namespace in namespaces:
        for plural, name in CHILDREN:
            operator.wait_logged(f"child event ADDED {plural} {namespace}/{name}:", 2)
    operator.wait_logged("Handler 'reconcile_service' succeeded", 2 * len(namespaces))
    # Created once each, and never POSTed while the old child was there: until the garbage collector has
    # removed it the operator's index shows it, owned by the deleted TTSService, and the operator waits.
    writes = kube_api.writes(operator.user, mark)
    assert _child_posts(writes, CREATED) == {(ns, p, n): 1 for ns in namespaces for p, n in CHILDREN}
    assert _child_posts(writes) == _child_posts(writes, CREATED), "a create was refused"
    owners = {
        (ns, p): kube_api.get(p, ns, n)["metadata"]["ownerReferences"][0]["uid"]  # type: ignore[index]
        for ns in namespaces
        for p, n in CHILDREN
    }
    assert owners == {(ns, p): uids[ns] for ns in namespaces for p, _ in CHILDREN}


def test_a_child_of_a_deleted_namesake_is_waited_for_not_given_up_on(
    kube_api: KubeAPI, run_operator: Callable[..., OperatorProcess]
) -> None:
    """On a cluster the garbage collector removes a deleted TTSService's children a moment later, so a
    TTSService applied again at once can find one. The operator waits for it to go, then creates its own."""
    # The level check (30 s) is not what must put it right.
    operator = run_operator(RESIDENCY_STATUS_SECONDS="0.5")
    ns = kube_api.namespace
    # A Service of a TTSService that is gone, being deleted (the garbage collector's doing) but held by a
    # finalizer, so that the operator surely meets it.
    gone = {
        "apiVersion": "tts.residency.dev/v1alpha1",
        "kind": "TTSService",
        "name": "voice",
        "uid": str(uuid.uuid4()),
        "controller": True,
    }
    stale = {
        "apiVersion": "v1",
        "kind": "Service",
        "spec": {"ports": [{"port": 8080}]},
        "metadata": {
            "name": "voice",
            "labels": labels("voice"),
            "ownerReferences": [gone],
            "finalizers": ["residency.dev/test-hold"],
        },
    }
    kube_api.create("services", stale)
    kube_api.delete("services", ns, "voice")
    uid = kube_api.create("ttsservices", SERVICE)["metadata"]["uid"]
    # The operator has met the stale Service: its create handler failed on it and will retry.
    operator.wait_logged("Handler 'reconcile_service' failed temporarily")
    kube_api.patch("services", ns, "voice", {"metadata": {"finalizers": None}})  # the deletion completes
    for plural, name in CHILDREN:
        child = kube_api.wait_for(
            lambda p=plural, n=name: (
                (c := kube_api.get(p, ns, n)) and c["metadata"]["ownerReferences"][0]["uid"] == uid and c
            ),
            timeout=20,
            what=f"{plural}/{name} of the new TTSService",
        )
        assert not child["metadata"].get("deletionTimestamp")
