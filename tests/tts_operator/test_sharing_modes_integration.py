"""GPU sharing modes on the real API server: the operator's children per mode, and groups from the scheduler.

The control plane has no scheduler, no kubelet and no device layer: pods and claims are made by the real
controllers (Deployment -> ReplicaSet -> Pod; the resource-claim controller makes each pod's claim from the
operator's ResourceClaimTemplate); what a scheduler, HAMi or a DRA driver would write (the node, HAMi's
allocation annotation, a claim's status.allocation through its status subresource) the test writes as they do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.cluster import ROOT
from support.kube import SERVICE_LABEL, KubeAPI, OperatorProcess
from tts_operator.builders import Images, Owner, build_children
from tts_operator.spec import parse_spec

pytestmark = pytest.mark.slow

FAST = {"RESIDENCY_STATUS_SECONDS": "0.5", "RESIDENCY_RECHECK_SECONDS": "2"}
GiB = 1 << 30
Operator = Callable[..., OperatorProcess]


def _apply(kube: KubeAPI, obj: dict[str, Any]) -> None:
    kube.cluster.kubectl("apply", "-n", kube.namespace, "-f", "-", input=json.dumps(obj))


def _service(name: str, gpu: dict[str, Any], replicas: int = 1, priority: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "tts.residency.dev/v1alpha1",
        "kind": "TTSService",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "hibari"},
            "replicas": replicas,
            "gpu": gpu,
            "residency": {
                "offloadAfterUse": True,
                "idleOffloadSeconds": 600,
                "idleReleaseSeconds": 3600,
                "pinned": False,
                "priority": priority,
            },
        },
    }


DRA = {"count": 1, "sharing": {"mode": "dra", "memory": "8Gi", "cores": 50, "dra": {"strategy": "MPS"}}}


def test_dra_claim_template_is_owned_recreated_replaced_and_removed(
    kube_api: KubeAPI, run_operator: Operator
) -> None:
    run_operator(**FAST)
    _apply(kube_api, _service("voice", DRA))
    owner = kube_api.wait_for(lambda: _get(kube_api, "tts", "voice"), what="service")
    template = kube_api.wait_for(
        lambda: _get(kube_api, "resourceclaimtemplate", "voice-gpu"), timeout=30, what="claim template"
    )
    assert template["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    mps = template["spec"]["spec"]["devices"]["config"][0]["opaque"]["parameters"]["sharing"]["mpsConfig"]
    assert mps == {"defaultActiveThreadPercentage": 50, "defaultPinnedDeviceMemoryLimit": "8Gi"}

    # Deleted by hand: back at once, a new object.
    kube_api.delete("resourceclaimtemplates", None, "voice-gpu")
    again = kube_api.wait_for(
        lambda: (
            (t := _get(kube_api, "resourceclaimtemplate", "voice-gpu"))
            and t["metadata"]["uid"] != template["metadata"]["uid"]
            and t
        ),
        timeout=30,
        what="re-created",
    )

    # A changed share: the (immutable) template is replaced and the pod template rolls.
    def claim_hash() -> str | None:
        deployment = _get(kube_api, "deployment", "voice") or {}
        meta = deployment.get("spec", {}).get("template", {}).get("metadata", {})
        found: str | None = (meta.get("annotations") or {}).get("tts.residency.dev/claim-spec")
        return found

    hash_before = kube_api.wait_for(claim_hash, what="claim hash on the pod template")
    changed = json.loads(json.dumps(DRA))
    changed["sharing"]["memory"] = "4Gi"
    _apply(kube_api, _service("voice", changed))

    def replaced() -> dict[str, Any] | None:
        t = _get(kube_api, "resourceclaimtemplate", "voice-gpu")
        reqs = t["spec"]["spec"]["devices"]["requests"] if t else []
        return t if reqs and reqs[0]["exactly"]["capacity"]["requests"]["memory"] == "4Gi" else None

    newer = kube_api.wait_for(replaced, timeout=30, what="replaced template")
    assert newer["metadata"]["uid"] != again["metadata"]["uid"]
    kube_api.wait_for(lambda: claim_hash() != hash_before, what="pod template rolled")

    # The real controllers make the new pod and its claim from the new template.
    def claim_of_4gi() -> list[dict[str, Any]]:
        return [
            c
            for c in _claims(kube_api)
            if c["spec"]["devices"]["requests"][0]["exactly"]["capacity"]["requests"]["memory"] == "4Gi"
        ]

    kube_api.wait_for(claim_of_4gi, timeout=60, what="a claim made from the new template")

    # Away from dra: the template goes.
    _apply(kube_api, _service("voice", {"count": 1, "sharing": {"mode": "exclusive"}}))
    kube_api.wait_for(
        lambda: _get(kube_api, "resourceclaimtemplate", "voice-gpu") is None,
        timeout=30,
        what="template removed",
    )


def _get(kube: KubeAPI, kind: str, name: str) -> dict[str, Any] | None:
    plural = {
        "tts": "ttsservices",
        "resourceclaimtemplate": "resourceclaimtemplates",
        "pod": "pods",
        "deployment": "deployments",
        "resourceclaim": "resourceclaims",
    }[kind]
    return kube.get(plural, None, name)


def _claims(kube: KubeAPI) -> list[dict[str, Any]]:
    return kube.list("resourceclaims")


# -- what the scheduler, HAMi and the agents would write -----------------------------------------------------


def _pod_of(kube: KubeAPI, service: str) -> dict[str, Any]:
    """The one live pod the service's Deployment made (the real ReplicaSet controller)."""

    def find() -> dict[str, Any] | None:
        live = [
            p
            for p in kube.list("pods", selector=f"{SERVICE_LABEL}={service}")
            if not p["metadata"].get("deletionTimestamp")
        ]
        return live[0] if len(live) == 1 else None

    found: dict[str, Any] = kube.wait_for(find, timeout=60, what=f"the pod of {service}")
    return found


def _annotate(kube: KubeAPI, pod: str, notes: dict[str, str]) -> None:
    kube.patch("pods", None, pod, {"metadata": {"annotations": notes}})


def _report(gpu: str, state: str, vram: int, demand: int = 0, priority: int = 0, free: int = 0) -> str:
    """An agent's `tts.residency.dev/residency` (the runtime's report on its GPU)."""
    return json.dumps(
        {
            "models": [
                {
                    "name": "hibari",
                    "state": state,
                    "vramBytes": vram,
                    "leases": 0,
                    "gpuDemandBytes": demand,
                    "policy": {
                        "priority": priority,
                        "pinned": False,
                        "offloadAfterUse": True,
                        "idleOffloadSeconds": 600,
                        "idleReleaseSeconds": 3600,
                    },
                }
            ],
            "gpu": {"uuid": gpu, "totalBytes": 16 * GiB, "freeBytes": free},
            "updated": "2026-01-01T00:00:01Z",
        }
    )


def _notes(kube: KubeAPI, pod: str) -> dict[str, str]:
    found = kube.get("pods", None, pod) or {}
    notes: dict[str, str] = found.get("metadata", {}).get("annotations") or {}
    return notes


def _share(kube: KubeAPI, pod: str) -> dict[str, Any] | None:
    raw = _notes(kube, pod).get("tts.residency.dev/gpu-share")
    return json.loads(raw) if raw else None


def _share_with(kube: KubeAPI, pod: str, peers: set[str], source: str) -> dict[str, Any] | None:
    share = _share(kube, pod)
    if share and share["source"] == source and {p["pod"].split("/")[1] for p in share["peers"]} == peers:
        return share
    return None


HAMI = {"count": 1, "sharing": {"mode": "hami", "memory": "4Gi", "cores": 30}}


def test_hami_allocation_places_pods_before_any_report_and_drives_offload(
    kube_api: KubeAPI, run_operator: Operator
) -> None:
    """Two HAMi services on one GPU: grouped from HAMi's annotation as soon as it is written (no runtime has
    reported); a time-sliced service on the same GPU joins by its report; a demand asks the idle low one."""
    run_operator(**FAST)
    _apply(kube_api, _service("high", HAMI, priority=10))
    _apply(kube_api, _service("low", HAMI, priority=0))
    sliced_gpu = {
        "count": 1,
        "resourceName": "nvidia.com/gpu.shared",
        "sharing": {"mode": "timeSlicing", "memory": "2Gi"},
    }
    _apply(kube_api, _service("sliced", sliced_gpu))
    high, low, sliced = (_pod_of(kube_api, s)["metadata"]["name"] for s in ("high", "low", "sliced"))
    pod = _get(kube_api, "pod", high)
    assert pod is not None and pod["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": "1",
        "nvidia.com/gpumem": "4096",
        "nvidia.com/gpucores": "30",
    }

    # HAMi's scheduler extender picks the GPU (annotations), then the pod is bound.
    uuid = "GPU-3f2a1c9e-0000-4000-8000-000000000001"
    for name in (high, low):
        _annotate(
            kube_api,
            name,
            {"hami.io/vgpu-node": "node-a", "hami.io/vgpu-devices-allocated": f"{uuid},NVIDIA,4096,30:;"},
        )
        kube_api.run_pod(name, "node-a")
    share = kube_api.wait_for(
        lambda: _share_with(kube_api, high, {low}, "hami"),
        timeout=30,
        what="high's group from HAMi's allocation",
    )
    assert share["group"] == f"node-a/{uuid}" and share["gpu"] == uuid and share["budgetBytes"] == 4 * GiB
    kube_api.wait_for(lambda: _share_with(kube_api, low, {high}, "hami"), what="low's group")

    # The time-sliced pod has no allocation annotation: its group comes from its runtime's report.
    kube_api.run_pod(sliced, "node-a")
    _annotate(kube_api, sliced, {"tts.residency.dev/residency": _report(uuid, "cpu", 0)})
    mine = kube_api.wait_for(
        lambda: _share_with(kube_api, sliced, {high, low}, "report"),
        timeout=30,
        what="sliced's group from its report",
    )
    assert mine["group"] == f"node-a/{uuid}" and mine["budgetBytes"] == 2 * GiB
    kube_api.wait_for(lambda: _share_with(kube_api, high, {low, sliced}, "hami"), what="high sees sliced")

    # Reports as the agents publish them: low holds an idle model, high needs 2 GiB more than is free.
    _annotate(kube_api, low, {"tts.residency.dev/residency": _report(uuid, "gpu", 3 * GiB)})
    _annotate(
        kube_api,
        high,
        {"tts.residency.dev/residency": _report(uuid, "unloaded", 0, demand=3 * GiB, priority=10, free=GiB)},
    )
    raw = kube_api.wait_for(
        lambda: _notes(kube_api, low).get("tts.residency.dev/offload-request"),
        timeout=30,
        what="offload request to the idle low-priority peer",
    )
    request = json.loads(raw)
    assert request["verb"] == "offload" and request["requestedBy"] == f"{kube_api.namespace}/{high}"
    assert "tts.residency.dev/offload-request" not in _notes(kube_api, sliced)


DRA_SHARED = {"count": 1, "sharing": {"mode": "dra", "memory": "4Gi", "dra": {"strategy": "MPS"}}}


def _allocate(kube: KubeAPI, claim: str, pod: dict[str, Any], device: str, node: str) -> None:
    """What the scheduler writes into a claim (status subresource) before binding the pod: the device from the
    driver's pool on the node, the capacity it consumed, and the pod as the claim's consumer."""
    result = {
        "request": "gpu",
        "driver": "gpu.nvidia.com",
        "pool": node,
        "device": device,
        "consumedCapacity": {"memory": "4Gi"},
    }
    on_node = {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]
    }
    consumer = {"resource": "pods", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}
    kube.patch(
        "resourceclaims",
        None,
        claim,
        {
            "status": {
                "allocation": {"devices": {"results": [result]}, "nodeSelector": on_node},
                "reservedFor": [consumer],
            }
        },
        status=True,
    )


def test_dra_claim_allocation_places_pods_and_drives_offload(
    kube_api: KubeAPI, run_operator: Operator
) -> None:
    """Two DRA services whose claims the scheduler allocates on one device: grouped from the claims' status
    (source dra) before any runtime reports; then a demand asks the idle peer to offload."""
    run_operator(**FAST)
    _apply(kube_api, _service("high", DRA_SHARED, priority=10))
    _apply(kube_api, _service("low", DRA_SHARED, priority=0))
    pods = {s: _pod_of(kube_api, s) for s in ("high", "low")}

    def claim_of(service: str) -> str | None:
        found = _get(kube_api, "pod", pods[service]["metadata"]["name"]) or {}
        statuses = found.get("status", {}).get("resourceClaimStatuses") or []
        name: str | None = statuses[0].get("resourceClaimName") if statuses else None
        return name

    for service in ("high", "low"):  # the resource-claim controller makes each pod's claim from the template
        claim = kube_api.wait_for(lambda s=service: claim_of(s), timeout=60, what=f"{service}'s claim")
        made = _get(kube_api, "resourceclaim", claim)
        assert made is not None and made["spec"]["devices"]["requests"][0]["exactly"]["deviceClassName"] == (
            "gpu.nvidia.com"
        )
        _allocate(kube_api, claim, pods[service], "gpu-0", "node-b")
        kube_api.run_pod(pods[service]["metadata"]["name"], "node-b")
    high, low = pods["high"]["metadata"]["name"], pods["low"]["metadata"]["name"]
    share = kube_api.wait_for(
        lambda: _share_with(kube_api, high, {low}, "dra"),
        timeout=30,
        what="high's group from the claim allocation",
    )
    assert share["group"] == "node-b/gpu.nvidia.com/node-b/gpu-0" and share["budgetBytes"] == 4 * GiB
    kube_api.wait_for(lambda: _share_with(kube_api, low, {high}, "dra"), what="low's group")

    device = "GPU-5b6c0000-0000-4000-8000-000000000002"  # what the runtimes see; the group stays the claim's
    _annotate(kube_api, low, {"tts.residency.dev/residency": _report(device, "gpu", 3 * GiB)})
    _annotate(
        kube_api,
        high,
        {"tts.residency.dev/residency": _report(device, "unloaded", 0, demand=2 * GiB, priority=10, free=0)},
    )
    raw = kube_api.wait_for(
        lambda: _notes(kube_api, low).get("tts.residency.dev/offload-request"),
        timeout=30,
        what="offload request to the idle peer",
    )
    assert json.loads(raw)["requestedBy"] == f"{kube_api.namespace}/{high}"
    assert _share_with(kube_api, high, {low}, "dra") is not None


def test_prefer_idle_places_a_new_pod_near_idle_memory(kube_api: KubeAPI, run_operator: Operator) -> None:
    """placement: preferIdle. The new pod waits behind the operator's gate; the operator gives it a preferred
    node affinity for the node whose idle models could free the most memory, then lifts the gate."""
    run_operator(**FAST)
    for name, node, vram in (("idle-a", "node-a", GiB), ("idle-b", "node-b", 3 * GiB)):
        _apply(kube_api, _service(name, HAMI))
        pod = _pod_of(kube_api, name)["metadata"]["name"]
        kube_api.run_pod(pod, node)
        _annotate(kube_api, pod, {"tts.residency.dev/residency": _report(f"GPU-{name}", "gpu", vram)})
    last = _pod_of(kube_api, "idle-b")["metadata"]["name"]
    kube_api.wait_for(lambda: _share(kube_api, last), what="the idle pods are known")

    placed = json.loads(json.dumps(HAMI))
    placed["sharing"]["placement"] = "preferIdle"
    _apply(kube_api, _service("new", placed, priority=5))

    def ungated() -> dict[str, Any] | None:
        pod = _pod_of(kube_api, "new")
        return pod if not pod["spec"].get("schedulingGates") else None

    pod = kube_api.wait_for(ungated, timeout=30, what="the gate lifted")
    terms = pod["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    ranked = [(t["preference"]["matchFields"][0]["values"][0], t["weight"]) for t in terms]
    assert ranked == [("node-b", 100), ("node-a", 33)]
    assert pod["metadata"]["annotations"]["hami.io/gpu-scheduler-policy"] == "binpack"


def test_dra_service_is_refused_clearly_without_dra_access(kube_api: KubeAPI, run_operator: Operator) -> None:
    """An operator that may not watch claims (here told so: RESIDENCY_DRA=off, as `tts-operator run` decides
    when RBAC or the API server says no) opens no claim watch and says what to fix; nothing is created."""
    operator = run_operator(RESIDENCY_DRA="off", **FAST)
    _apply(kube_api, _service("voice", DRA))

    def degraded() -> dict[str, Any] | None:
        conditions = ((_get(kube_api, "tts", "voice") or {}).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Degraded" and c["status"] == "True"), None)

    condition = kube_api.wait_for(degraded, timeout=30, what="Degraded condition")
    assert "gpu.sharing.mode dra" in condition["message"] and "resourceclaims" in condition["message"]
    operator.wait_logged("Handler 'reconcile_service' failed permanently")
    assert _get(kube_api, "deployment", "voice") is None
    assert _get(kube_api, "resourceclaimtemplate", "voice-gpu") is None
    streams = [line for line in operator.logs().splitlines() if "Starting the watch-stream for" in line]
    assert any("pods.v1" in line for line in streams)
    assert not any("resource.k8s.io" in line for line in streams)


EXAMPLES = sorted((ROOT / "examples").glob("ttsservice-sharing-*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_each_mode_example_and_its_children_apply_on_the_api_server(kube_api: KubeAPI, path: Path) -> None:
    """The example applies, and everything the operator renders for it (the pod template's resources or
    claims, the DRA claim template) is accepted by the API server (`kubectl apply --dry-run=server`)."""
    doc = yaml.safe_load(path.read_text())
    _apply(kube_api, doc)
    created = _get(kube_api, "tts", doc["metadata"]["name"])
    assert created is not None
    owner = Owner(
        name=doc["metadata"]["name"],
        namespace=kube_api.namespace,
        uid=created["metadata"]["uid"],
        spec=parse_spec(created["spec"], doc["metadata"]["name"]),
    )
    children = build_children(owner, Images())
    for child in children:
        kube_api.cluster.kubectl(
            "apply", "-n", kube_api.namespace, "--dry-run=server", "-f", "-", input=json.dumps(child)
        )
    pod = next(c for c in children if c["kind"] == "Deployment")["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    mode = owner.spec.gpu.sharing.mode
    expected = {
        "exclusive": lambda: resources["limits"] == {"nvidia.com/gpu": "1"},
        "timeSlicing": lambda: resources["limits"] == {"nvidia.com/gpu.shared": "1"},
        "hami": lambda: resources["limits"]["nvidia.com/gpumem"] == "4096",
        "dra": lambda: pod["resourceClaims"][0]["resourceClaimTemplateName"] == f"{owner.name}-gpu",
    }
    assert expected[mode](), (mode, resources, pod.get("resourceClaims"))
