"""spec.gpu.sharing: each mode renders what its device layer expects; a bad share says what to fix."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tts_contract import annotations as ann
from tts_operator.allocations import MIB, ClaimAllocation, Device, claim_allocation, hami_devices, pod_claims
from tts_operator.builders import (
    CLAIM_SPEC,
    Images,
    Owner,
    binary_quantity,
    build_children,
    build_deployment,
    build_resource_claim_template,
)
from tts_operator.sharing import (
    Placement,
    node_affinity,
    placement,
    plan_gpu_sharing,
    preferred_nodes,
    with_claims,
)
from tts_operator.spec import InvalidSpecError, parse_spec
from tts_operator.status import PodInfo

ROOT = Path(__file__).resolve().parents[2]


def _owner(gpu: dict[str, Any], name: str = "voice") -> Owner:
    spec = parse_spec({"model": {"name": "hibari"}, "gpu": gpu})
    return Owner(name=name, namespace="ns", uid="uid-1", spec=spec)


def _pod(owner: Owner) -> dict[str, Any]:
    template: dict[str, Any] = build_deployment(owner, Images())["spec"]["template"]
    return template


def _runtime(owner: Owner) -> dict[str, Any]:
    container: dict[str, Any] = _pod(owner)["spec"]["containers"][0]
    return container


def _budget_env(owner: Owner) -> str | None:
    env = _runtime(owner)["env"]
    return next((e["value"] for e in env if e["name"] == "TTS_RUNTIME_GPU_MEMORY_BUDGET_BYTES"), None)


def test_default_is_todays_exclusive_gpu() -> None:
    owner = _owner({})
    assert owner.spec.gpu.sharing.mode == "exclusive"
    assert _runtime(owner)["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert _budget_env(owner) is None and "resourceClaims" not in _pod(owner)["spec"]
    assert [c["kind"] for c in build_children(owner, Images())].count("ResourceClaimTemplate") == 0


def test_time_slicing_asks_for_the_shared_resource_and_budgets_the_share() -> None:
    owner = _owner(
        {"resourceName": "nvidia.com/gpu.shared", "sharing": {"mode": "timeSlicing", "memory": "6Gi"}}
    )
    assert _runtime(owner)["resources"]["limits"] == {"nvidia.com/gpu.shared": "1"}
    assert _budget_env(owner) == str(6 << 30)


def test_hami_limits_memory_in_mib_and_cores() -> None:
    owner = _owner({"sharing": {"mode": "hami", "memory": "4Gi", "cores": 30}})
    assert _runtime(owner)["resources"]["limits"] == {
        "nvidia.com/gpu": "1",
        "nvidia.com/gpumem": "4096",
        "nvidia.com/gpucores": "30",
    }
    assert _budget_env(owner) == str(4 << 30)


def test_budget_is_the_smaller_of_the_share_and_memory_budget() -> None:
    owner = _owner({"memoryBudgetBytes": 2 << 30, "sharing": {"mode": "hami", "memory": "4Gi"}})
    assert _budget_env(owner) == str(2 << 30)
    assert _budget_env(_owner({"memoryBudgetBytes": 3 << 30})) == str(3 << 30)


def test_dra_renders_an_owned_claim_template_and_the_pod_claim() -> None:
    owner = _owner({"sharing": {"mode": "dra", "memory": "8192Mi", "cores": 50, "dra": {"strategy": "MPS"}}})
    template = build_resource_claim_template(owner)
    assert template["metadata"]["name"] == "voice-gpu"
    assert template["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    devices = template["spec"]["spec"]["devices"]
    assert devices["requests"] == [
        {
            "name": "gpu",
            "exactly": {
                "deviceClassName": "gpu.nvidia.com",
                "allocationMode": "ExactCount",
                "count": 1,
                "capacity": {"requests": {"memory": "8Gi"}},
            },
        }
    ]
    assert devices["config"] == [
        {
            "requests": ["gpu"],
            "opaque": {
                "driver": "gpu.nvidia.com",
                "parameters": {
                    "apiVersion": "resource.nvidia.com/v1beta1",
                    "kind": "GpuConfig",
                    "sharing": {
                        "strategy": "MPS",
                        "mpsConfig": {
                            "defaultActiveThreadPercentage": 50,
                            "defaultPinnedDeviceMemoryLimit": "8Gi",
                        },
                    },
                },
            },
        }
    ]
    pod = _pod(owner)
    assert pod["spec"]["resourceClaims"] == [{"name": "gpu", "resourceClaimTemplateName": "voice-gpu"}]
    assert _runtime(owner)["resources"] == {"claims": [{"name": "gpu"}]}
    kinds = [c["kind"] for c in build_children(owner, Images())]
    assert kinds.index("ResourceClaimTemplate") < kinds.index("Deployment")
    # A changed claim spec changes the pod template (the template itself is immutable and re-created).
    other = _owner({"sharing": {"mode": "dra", "memory": "4Gi", "dra": {"strategy": "TimeSlicing"}}})
    assert pod["metadata"]["annotations"][CLAIM_SPEC] != _pod(other)["metadata"]["annotations"][CLAIM_SPEC]
    config = build_resource_claim_template(other)["spec"]["spec"]["devices"]["config"][0]
    assert config["opaque"]["parameters"]["sharing"] == {
        "strategy": "TimeSlicing",
        "timeSlicingConfig": {"interval": "Default"},
    }


def test_dra_with_a_shared_claim_makes_no_template() -> None:
    owner = _owner({"sharing": {"mode": "dra", "dra": {"resourceClaimName": "shared-gpu"}}})
    assert _pod(owner)["spec"]["resourceClaims"] == [{"name": "gpu", "resourceClaimName": "shared-gpu"}]
    assert "ResourceClaimTemplate" not in [c["kind"] for c in build_children(owner, Images())]


def test_prefer_idle_gates_new_pods_and_asks_hami_to_binpack() -> None:
    pod = _pod(_owner({"sharing": {"mode": "hami", "memory": "4Gi", "placement": "preferIdle"}}))
    assert pod["spec"]["schedulingGates"] == [{"name": "tts.residency.dev/placement"}]
    assert pod["metadata"]["annotations"] == {
        "hami.io/node-scheduler-policy": "binpack",
        "hami.io/gpu-scheduler-policy": "binpack",
    }
    assert "schedulingGates" not in _pod(_owner({"sharing": {"mode": "hami", "memory": "4Gi"}}))["spec"]


@pytest.mark.parametrize(
    ("gpu", "message"),
    [
        ({"sharing": {"mode": "hami"}}, "gpu.sharing.memory is required for mode hami"),
        ({"sharing": {"mode": "timeSlicing"}}, "time-slicing isolates no memory"),
        ({"count": 0, "sharing": {"mode": "dra"}}, "needs gpu.count of at least 1"),
        ({"sharing": {"cores": 10}}, "gpu.sharing.cores applies to mode hami"),
        (
            {"sharing": {"mode": "hami", "memory": "4Gi", "dra": {}}},
            "gpu.sharing.dra applies to mode dra only",
        ),
        ({"sharing": {"mode": "dra", "dra": {"strategy": "MPS", "interval": "Long"}}}, "interval applies to"),
        (
            {"sharing": {"mode": "dra", "dra": {"resourceClaimName": "x", "strategy": "MPS"}}},
            "remove gpu.sharing.dra",
        ),
        ({"sharing": {"mode": "hami", "memory": "4 GB"}}, "must be a quantity such as 8Gi"),
        ({"sharing": {"mode": "hami", "memory": "100Ki"}}, "at least 1Mi"),
        ({"sharing": {"mode": "mig"}}, "spec.gpu.sharing.mode"),
    ],
)
def test_bad_sharing_is_refused_with_what_to_fix(gpu: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpecError, match=message):
        parse_spec({"model": {"name": "hibari"}, "gpu": gpu})


def test_binary_quantity_is_what_the_api_server_writes_back() -> None:
    sizes = (4 << 30, 8192 << 20, 1536 << 20, 1 << 40)
    assert [binary_quantity(n) for n in sizes] == ["4Gi", "8Gi", "1536Mi", "1Ti"]


def test_one_example_per_mode() -> None:
    modes = {}
    for path in sorted((ROOT / "examples").glob("ttsservice-sharing-*.yaml")):
        doc = yaml.safe_load(path.read_text())
        modes[parse_spec(doc["spec"]).gpu.sharing.mode] = path.name
    assert set(modes) == {"exclusive", "timeSlicing", "hami", "dra"}


# -- groups from the scheduler's decision ------------------------------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)
HAMI = "GPU-8a1b,NVIDIA,4096,30:;"


def _report(models: list[dict[str, Any]], gpu: str | None = None) -> ann.ResidencyValue | None:
    report = {"models": models, "gpu": {"uuid": gpu} if gpu else None}
    return ann.parse(ann.ResidencyValue, json.dumps(report))


def _idle(vram: int, priority: int = 0) -> dict[str, Any]:
    return {"name": "m", "state": "gpu", "vramBytes": vram, "leases": 0, "policy": {"priority": priority}}


def test_hami_annotation_parses_devices_and_share() -> None:
    assert hami_devices(HAMI) == (Device("GPU-8a1b", 4096 * MIB, 30),)
    two = hami_devices("GPU-a,NVIDIA,1000,0:GPU-b,NVIDIA,2000,50:;GPU-c,NVIDIA,10,0:;")
    assert [(d.id, d.cores) for d in two] == [("GPU-a", None), ("GPU-b", 50), ("GPU-c", None)]
    assert hami_devices(None) == () and hami_devices("garbage") == () and hami_devices(";") == ()


def test_claim_allocation_reads_devices_and_node() -> None:
    claim = {
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {
                            "request": "gpu",
                            "driver": "gpu.nvidia.com",
                            "pool": "node-a",
                            "device": "gpu-0",
                            "consumedCapacity": {"memory": "8Gi"},
                        }
                    ]
                },
                "nodeSelector": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-a"]}]}
                    ]
                },
            }
        }
    }
    assert claim_allocation(claim) == ClaimAllocation(
        (Device("gpu.nvidia.com/node-a/gpu-0", 8 << 30),), "node-a"
    )
    assert claim_allocation({"status": {}}) == ClaimAllocation()


def test_pod_claims_from_status_and_spec() -> None:
    body = {
        "spec": {
            "resourceClaims": [
                {"name": "gpu", "resourceClaimTemplateName": "t"},
                {"name": "x", "resourceClaimName": "shared"},
            ]
        },
        "status": {"resourceClaimStatuses": [{"name": "gpu", "resourceClaimName": "pod-gpu-abcde"}]},
    }
    assert pod_claims(body) == ("pod-gpu-abcde", "shared")


def test_placement_prefers_the_scheduler_and_falls_back_to_the_report() -> None:
    reported = PodInfo("ns", "p", "s", node="node-a", residency=_report([], gpu="GPU-rep"))
    assert placement(reported) == Placement("node-a", "GPU-rep", "report")
    hami = replace(reported, node=None, hami=hami_devices(HAMI), hami_node="node-b")
    assert placement(hami) == Placement("node-b", "GPU-8a1b", "hami", 4096 * MIB)
    dra = PodInfo("ns", "q", "s", claims=("q-gpu",))
    allocated = ClaimAllocation((Device("gpu.nvidia.com/node-a/gpu-0"),), "node-a")
    resolved = with_claims(dra, lambda ns, name: allocated if (ns, name) == ("ns", "q-gpu") else None)
    assert placement(dra) is None  # not allocated yet (as far as the index knows)
    assert placement(resolved) == Placement("node-a", "gpu.nvidia.com/node-a/gpu-0", "dra")
    assert placement(replace(resolved, terminating=True)) is None


def test_pods_placed_by_hami_share_before_any_report() -> None:
    pods = [
        PodInfo("ns", n, s, node="node-a", hami=hami_devices(HAMI)) for n, s in (("a", "s1"), ("b", "s2"))
    ]
    changes = plan_gpu_sharing(pods, {"ns/s1": 8 << 30, "ns/s2": None}, NOW)
    share = ann.parse(ann.GpuShareValue, changes["ns/a"][ann.GPU_SHARE])
    assert share is not None and share.source == "hami"
    assert (share.group, share.gpu) == ("node-a/GPU-8a1b", "GPU-8a1b")
    assert share.budget_bytes == 4096 * MIB  # HAMi enforces 4 GiB, less than the spec's budget
    assert [(p.pod, p.resident_bytes) for p in share.peers] == [("ns/b", 0)]


def test_preferred_nodes_rank_idle_freeable_memory() -> None:
    pods = [
        PodInfo("ns", "a", "s", node="n1", residency=_report([_idle(300)], gpu="G1")),
        PodInfo("ns", "b", "s", node="n2", residency=_report([_idle(900)], gpu="G2")),
        PodInfo("ns", "c", "s", node="n2", residency=_report([_idle(100, priority=9)], gpu="G2")),
        PodInfo("ns", "d", "s", node="n3", residency=_report([], gpu="G3")),
    ]
    assert preferred_nodes(pods, priority=5) == [("n2", 900), ("n1", 300)]
    assert preferred_nodes(pods, priority=9) == [("n2", 1000), ("n1", 300)]
    affinity = node_affinity(preferred_nodes(pods, priority=5))
    terms = affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]  # type: ignore[index]
    assert [(t["weight"], t["preference"]["matchFields"][0]["values"]) for t in terms] == [
        (100, ["n2"]),
        (33, ["n1"]),
    ]
    assert node_affinity([]) == {}
