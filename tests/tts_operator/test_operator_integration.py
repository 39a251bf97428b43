"""The real operator (`tts-operator run`) against the emulated Kubernetes API: children, status, policy."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from support.kube import KubeAPI, Process, make_pod

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
