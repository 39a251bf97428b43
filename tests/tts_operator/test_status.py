"""Status aggregation and conditions from indexed pods."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tts_contract import annotations as ann
from tts_operator.status import PodInfo, aggregate, human_bytes, set_condition, status_changed

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _pod(
    name: str,
    state: str,
    vram: int = 0,
    ready: bool = True,
    error: str | None = None,
    used: str | None = None,
) -> PodInfo:
    raw = json.dumps(
        {"models": [{"name": "m", "state": state, "vramBytes": vram, "error": error, "lastUsed": used}]}
    )
    return PodInfo("ns", name, "svc", ready=ready, residency=ann.parse(ann.ResidencyValue, raw))


def test_set_condition_keeps_transition_time_when_status_is_unchanged() -> None:
    first = set_condition([], "Ready", True, "A", "m", NOW, 1)
    later = set_condition(first, "Ready", True, "B", "m2", NOW + timedelta(hours=1), 2)
    assert later[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert later[0]["reason"] == "B" and later[0]["observedGeneration"] == 2
    flipped = set_condition(later, "Ready", False, "C", "m3", NOW + timedelta(hours=2), 2)
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T02:00:00Z" and flipped[0]["status"] == "False"


def test_aggregate_counts_states_vram_and_last_use() -> None:
    pods = [
        _pod("a", "gpu", 2**30, used="2026-01-01T00:00:00Z"),
        _pod("b", "cpu", used="2026-01-02T00:00:00Z"),
        _pod("c", "failed", ready=False, error="CUDA OOM"),
        PodInfo("ns", "d", "svc", ready=True),
        PodInfo("ns", "e", "svc", terminating=True, ready=True),
    ]
    status = aggregate(pods, replicas=4, generation=3, endpoint="http://x", conditions=[], now=NOW)
    assert status["pods"] == {"gpu": 1, "cpu": 1, "unloaded": 0, "failed": 1}
    assert status["vramBytes"] == 2**30 and status["vram"] == "1Gi"
    assert status["ready"] == "3/4" and status["replicas"] == 4 and status["observedGeneration"] == 3
    assert status["lastUsed"] == "2026-01-02T00:00:00Z"
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "ReplicasNotReady"
    assert conds["Degraded"]["status"] == "True" and "CUDA OOM" in conds["Degraded"]["message"]
    assert conds["Progressing"]["status"] == "True"
    assert not status_changed(
        status,
        aggregate(
            pods,
            replicas=4,
            generation=3,
            endpoint="http://x",
            conditions=status["conditions"],
            now=NOW + timedelta(1),
        ),
    )


def test_invalid_spec_conditions() -> None:
    status = aggregate(
        [], replicas=0, generation=2, endpoint="e", conditions=[], now=NOW, invalid="spec.replicas: bad"
    )
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Ready"]["reason"] == "InvalidSpec" and conds["Ready"]["status"] == "False"
    assert conds["Degraded"]["status"] == "True" and conds["Degraded"]["message"] == "spec.replicas: bad"


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1536, 3 * 2**29, 2**40 * 3)] == ["0", "1.5Ki", "1.5Gi", "3Ti"]
