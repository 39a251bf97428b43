"""The GPU-sharing plan: share annotations per GPU group, offload requests to idle lower-priority peers."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from tts_contract import annotations as ann
from tts_operator.sharing import Touched, plan_gpu_sharing
from tts_operator.status import PodInfo

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _pod(
    name: str,
    service: str,
    models: list[dict[str, Any]],
    gpu: str | None = "GPU-1",
    node: str = "n1",
    **extra: Any,
) -> PodInfo:
    report = {"models": models, "gpu": {"uuid": gpu} if gpu else None, "updated": "2026-01-01T00:00:00Z"}
    residency = ann.parse(ann.ResidencyValue, json.dumps(report))
    return PodInfo("ns", name, service, node=node, residency=residency, **extra)


def _model(
    state: str, vram: int = 0, demand: int = 0, priority: int = 0, pinned: bool = False, leases: int = 0
) -> dict[str, Any]:
    return {
        "name": "m",
        "state": state,
        "vramBytes": vram,
        "gpuDemandBytes": demand,
        "leases": leases,
        "policy": {"priority": priority, "pinned": pinned},
    }


def test_share_annotation_lists_peers_on_the_same_gpu_only() -> None:
    pods = [
        _pod("a", "s1", [_model("gpu", 100)]),
        _pod("b", "s2", [_model("cpu")]),
        _pod("c", "s3", [_model("gpu", 5)], gpu="GPU-2"),
    ]
    changes = plan_gpu_sharing(pods, {"ns/s1": 1000}, NOW)
    share = ann.parse(ann.GpuShareValue, changes["ns/a"][ann.GPU_SHARE])
    assert share is not None and share.group == "n1/GPU-1" and share.budget_bytes == 1000
    assert [(p.pod, p.resident_bytes) for p in share.peers] == [("ns/b", 0)]
    other = ann.parse(ann.GpuShareValue, changes["ns/c"][ann.GPU_SHARE])
    assert other is not None and other.peers == []
    assert all(ann.OFFLOAD_REQUEST not in c for c in changes.values())


def test_unchanged_share_is_not_rewritten_and_cpu_pods_lose_it() -> None:
    pods = [_pod("a", "s1", [_model("gpu", 100)])]
    raw = plan_gpu_sharing(pods, {}, NOW)["ns/a"][ann.GPU_SHARE]
    assert plan_gpu_sharing([_pod("a", "s1", [_model("gpu", 100)], gpu_share=raw)], {}, NOW) == {}
    assert plan_gpu_sharing([_pod("a", "s1", [], gpu=None, gpu_share=raw)], {}, NOW) == {
        "ns/a": {ann.GPU_SHARE: None}
    }


def test_demand_asks_idle_lower_priority_peer_to_offload() -> None:
    pods = [
        _pod("hi", "s1", [_model("unloaded", demand=100, priority=5)]),
        _pod("busy", "s2", [_model("gpu", 500, leases=1)]),
        _pod("pinned", "s3", [_model("gpu", 500, pinned=True)]),
        _pod("higher", "s4", [_model("gpu", 500, priority=9)]),
        _pod("idle", "s5", [_model("gpu", 300, priority=1)]),
        _pod("idle2", "s6", [_model("gpu", 300, priority=2)]),
    ]
    changes = plan_gpu_sharing(pods, {}, NOW)
    asked = {k for k, v in changes.items() if ann.OFFLOAD_REQUEST in v}
    assert asked == {"ns/idle"}  # lowest priority first; one is enough for 100 bytes
    request = ann.parse(ann.OffloadRequestValue, changes["ns/idle"][ann.OFFLOAD_REQUEST])
    assert request is not None and request.requested_by == "ns/hi" and request.verb == "offload"
    # Deterministic, and not sent again once issued (the agent acknowledged it by removing it).
    assert plan_gpu_sharing(pods, {}, NOW) == changes
    again = plan_gpu_sharing(pods, {}, NOW, frozenset({request.id}))
    assert {k for k, v in again.items() if ann.OFFLOAD_REQUEST in v} == {"ns/idle2"}


def test_pending_request_is_not_duplicated() -> None:
    pods = [
        _pod("hi", "s1", [_model("unloaded", demand=100)]),
        _pod("idle", "s2", [_model("gpu", 300)], offload_request='{"id":"x"}'),
    ]
    assert all(ann.OFFLOAD_REQUEST not in c for c in plan_gpu_sharing(pods, {}, NOW).values())


def _peers(changes: dict[str, dict[str, str | None]], key: str) -> list[str]:
    share = ann.parse(ann.GpuShareValue, changes[key][ann.GPU_SHARE])
    assert share is not None
    return [p.pod for p in share.peers]


def test_a_pass_plans_only_the_groups_its_events_touched() -> None:
    pods = [
        _pod("a", "s1", [_model("gpu", 1)]),
        _pod("b", "s2", [_model("gpu", 2)]),
        _pod("c", "s3", [_model("gpu", 3)], gpu="GPU-2"),
        _pod("d", "s4", [_model("gpu", 4)], gpu="GPU-2"),
    ]
    # Every pod lacks its share annotation: planning the whole cluster would write all four.
    assert set(plan_gpu_sharing(pods, {}, NOW)) == {"ns/a", "ns/b", "ns/c", "ns/d"}
    touched = Touched()
    touched.pod_event(pods[0])
    taken = touched.take()
    assert not touched and taken.groups == {"n1/GPU-1"}
    selected = taken.select(pods)
    assert [p.key for p in selected] == ["ns/a", "ns/b"]  # the untouched pod's peer comes with it
    changes = plan_gpu_sharing(selected, {}, NOW)
    assert set(changes) == {"ns/a", "ns/b"} and _peers(changes, "ns/b") == ["ns/a"]


def test_a_pod_that_moves_or_goes_replans_its_old_group_too() -> None:
    a, b = _pod("a", "s1", [_model("gpu", 1)]), _pod("b", "s2", [_model("gpu", 2)])
    c = _pod("c", "s3", [_model("gpu", 3)], gpu="GPU-2")
    touched = Touched()
    for pod in (a, b, c):
        touched.pod_event(pod)
    b = replace(b, gpu_share=plan_gpu_sharing([a, b], {}, NOW)["ns/b"][ann.GPU_SHARE])
    touched.take()
    moved = _pod("a", "s1", [_model("gpu", 1)], gpu="GPU-2")
    touched.pod_event(moved)
    taken = touched.take()
    assert taken.groups == {"n1/GPU-1", "n1/GPU-2"}
    changes = plan_gpu_sharing(taken.select([moved, b, c]), {}, NOW)
    assert _peers(changes, "ns/b") == [] and _peers(changes, "ns/a") == ["ns/c"]

    touched.pod_event(c, gone=True)  # deleted: its peers drop it, and it is not remembered
    taken = touched.take()
    assert taken.groups == {"n1/GPU-2"} and [p.key for p in taken.select([moved, b])] == ["ns/a"]
    touched.pod_event(c)
    assert touched.take().groups == {"n1/GPU-2"}  # a new pod under the name: only its own group


def test_a_touched_pod_outside_every_group_loses_its_stale_share() -> None:
    off = _pod("a", "s1", [_model("cpu")], gpu=None, gpu_share="stale")
    other = _pod("b", "s2", [_model("cpu")], gpu=None, gpu_share="stale")
    touched = Touched()
    touched.pod_event(off)
    taken = touched.take()
    assert taken.groups == set()
    assert plan_gpu_sharing(taken.select([off, other]), {}, NOW) == {"ns/a": {ann.GPU_SHARE: None}}
