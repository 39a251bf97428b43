"""Pure builders: shape, security, credentials, owner references, determinism, API-schema validity."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest

from tts_operator.builders import Images, Owner, build_children, build_deployment, differs, models_json
from tts_operator.reconcile import needs_patch, owned_part, stale_policy_pods
from tts_operator.spec import parse_spec
from tts_operator.status import PodInfo

IMAGES = Images(runtime="example.com/runtime:1", agent="example.com/agent:1")


def _owner(**spec: Any) -> Owner:
    raw = {"model": {"name": "hibari"}, **spec}
    return Owner(name="voice", namespace="tts", uid="uid-1", spec=parse_spec(raw, "voice"))


def _containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"gpu": {"count": 0}, "env": [{"name": "X", "value": "1"}]},
        {
            "model": {"name": "s", "source": {"pvc": {"claimName": "w"}}},
            "tolerations": [{"key": "g", "operator": "Exists"}],
            "nodeSelector": {"gpu": "yes"},
        },
    ],
)
def test_every_child_is_valid_for_the_api_server(spec: dict[str, Any]) -> None:
    for child in build_children(_owner(**spec), IMAGES):
        kubernetes_validate.validate(child, "1.30.0", strict=True)


def test_children_are_owned_labelled_and_deterministic() -> None:
    first = build_children(_owner(), IMAGES)
    assert json.dumps(first, sort_keys=True) == json.dumps(build_children(_owner(), IMAGES), sort_keys=True)
    assert [c["kind"] for c in first] == ["ServiceAccount", "Role", "RoleBinding", "Service", "Deployment"]
    for child in first:
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == "uid-1" and ref["controller"] is True and ref["kind"] == "TTSService"
        assert child["metadata"]["labels"]["tts.residency.dev/service"] == "voice"
        assert child["metadata"]["namespace"] == "tts"


def test_pod_security_and_credentials() -> None:
    deployment = build_deployment(_owner(gpu={"count": 2, "resourceName": "amd.com/gpu"}), IMAGES)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "voice-agent"
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"]
    containers = _containers(deployment)
    assert list(containers) == ["runtime", "agent"]
    for c in containers.values():
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    runtime, agent = containers["runtime"], containers["agent"]
    assert all(m["name"] != "kube-api-access" for m in runtime["volumeMounts"])  # no API token in runtime
    assert any(m["name"] == "kube-api-access" for m in agent["volumeMounts"])
    assert runtime["resources"]["limits"]["amd.com/gpu"] == "2"
    assert runtime["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert runtime["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert runtime["image"] == "example.com/runtime:1" and agent["image"] == "example.com/agent:1"
    assert {e["name"] for e in agent["env"]} == {"POD_NAME", "POD_NAMESPACE"}


def test_policy_edit_does_not_change_the_pod_template() -> None:
    before = build_deployment(_owner(), IMAGES)
    after = build_deployment(_owner(residency={"priority": 5, "pinned": True}), IMAGES)
    assert before == after
    models = json.loads(models_json(_owner(model={"name": "m", "source": {"uri": "hf://o/r"}}).spec))
    assert models["models"][0]["options"]["weights"] == "hf://o/r" and "policy" not in models["models"][0]


def test_differs_compares_only_what_we_set() -> None:
    desired = {"spec": {"replicas": 2, "ports": [{"port": 80}]}, "metadata": {"labels": {"a": "1"}}}
    observed = {
        "spec": {"replicas": 2, "ports": [{"port": 80, "protocol": "TCP"}], "extra": 1},
        "metadata": {"labels": {"a": "1", "b": "2"}, "uid": "x"},
    }
    assert not differs(desired, observed)
    assert differs(desired, {**observed, "spec": {**observed["spec"], "replicas": 3}})
    assert differs(desired, {**observed, "spec": {**observed["spec"], "ports": []}})
    child = build_deployment(_owner(), IMAGES)
    assert not needs_patch(child, json.loads(json.dumps(child)))
    drifted = json.loads(json.dumps(child))
    drifted["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:1"
    assert needs_patch(child, drifted)
    assert "apiVersion" not in owned_part(child) and "ownerReferences" in owned_part(child)["metadata"]


def test_stale_policy_pods_skips_current_and_terminating() -> None:
    pods = [
        PodInfo("ns", "a", "s", policy="p1"),
        PodInfo("ns", "b", "s", policy=None),
        PodInfo("ns", "c", "s", policy="old", terminating=True),
    ]
    assert [p.name for p in stale_policy_pods(pods, "p1")] == ["b"]
