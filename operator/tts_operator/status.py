"""Pure status: pods (as indexed from the watch) become `TTSService.status` and its conditions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tts_contract import State, names
from tts_contract import annotations as ann
from tts_operator.allocations import HAMI_ALLOCATED, HAMI_NODE, Device, hami_devices, pod_claims

Conditions = list[dict[str, Any]]


@dataclass(frozen=True)
class PodInfo:
    """What the operator keeps about one pod of a TTSService (the index value)."""

    namespace: str
    name: str
    service: str
    node: str | None = None
    ready: bool = False
    terminating: bool = False
    residency: ann.ResidencyValue | None = None
    policy: str | None = None  # raw annotations, compared as written
    gpu_share: str | None = None
    offload_request: str | None = None
    gated: bool = False  # still held by the operator's placement gate
    # The scheduler's decision: HAMi's allocated devices (and node), the pod's DRA claims by name; the claims'
    # devices and node are filled in from the claim index (`with_claims`) by the operator.
    hami: tuple[Device, ...] = ()
    hami_node: str | None = None
    claims: tuple[str, ...] = ()
    claim_devices: tuple[Device, ...] = ()
    claim_node: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_pod(cls, body: Any) -> PodInfo:
        meta = body.get("metadata") or {}
        notes = meta.get("annotations") or {}
        conditions = (body.get("status") or {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        return cls(
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            service=(meta.get("labels") or {}).get(names.SERVICE_LABEL, ""),
            node=(body.get("spec") or {}).get("nodeName"),
            ready=ready,
            terminating=bool(meta.get("deletionTimestamp")),
            residency=ann.parse(ann.ResidencyValue, notes.get(ann.RESIDENCY)),
            policy=notes.get(ann.POLICY),
            gpu_share=notes.get(ann.GPU_SHARE),
            offload_request=notes.get(ann.OFFLOAD_REQUEST),
            gated=any(
                g.get("name") == names.PLACEMENT_GATE
                for g in (body.get("spec") or {}).get("schedulingGates") or []
            ),
            hami=hami_devices(notes.get(HAMI_ALLOCATED)),
            hami_node=notes.get(HAMI_NODE),
            claims=pod_claims(body),
        )


def human_bytes(n: int) -> str:
    """Kubernetes-style binary units, one decimal at most: 1536 MiB -> "1.5Gi"."""
    value = float(n)
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if value < 1024 or unit == "Ti":
            text = f"{value:.1f}".removesuffix(".0")
            return f"{text}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Conditions,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
) -> Conditions:
    """The conditions with `type_` set; `lastTransitionTime` only moves when the status changes."""
    value = "True" if status else "False"
    previous = next((c for c in conditions if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != value
    entry = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": _rfc3339(now) if changed else previous["lastTransitionTime"],  # type: ignore[index]
        "observedGeneration": generation,
    }
    rest = [c for c in conditions if c.get("type") != type_]
    return sorted([*rest, entry], key=lambda c: str(c.get("type")))


def aggregate(
    pods: list[PodInfo],
    *,
    replicas: int,
    generation: int,
    endpoint: str,
    conditions: Conditions,
    now: datetime,
    invalid: str | None = None,
) -> dict[str, Any]:
    """The whole status from the pods of one service. `invalid` is the spec problem, if any."""
    live = [p for p in pods if not p.terminating]
    counts = {s.value: 0 for s in (State.GPU, State.CPU, State.UNLOADED, State.FAILED)}
    vram = 0
    last_used: datetime | None = None
    errors: list[str] = []
    for pod in live:
        report = pod.residency
        if report is None:
            continue  # no report yet: counted in neither state rather than guessed
        counts[report.pod_state().value] += 1
        vram += report.vram_bytes
        for model in report.models:
            if model.last_used is not None and (last_used is None or model.last_used > last_used):
                last_used = model.last_used
            if model.state == State.FAILED:
                errors.append(f"{pod.name}/{model.name}: {model.error or 'failed'}")
    ready = sum(1 for p in live if p.ready)

    if invalid is not None:
        conditions = set_condition(conditions, "Ready", False, "InvalidSpec", invalid, now, generation)
        conditions = set_condition(conditions, "Degraded", True, "InvalidSpec", invalid, now, generation)
        conditions = set_condition(
            conditions,
            "Progressing",
            False,
            "InvalidSpec",
            "fix the spec to resume reconciling",
            now,
            generation,
        )
    else:
        all_ready = ready >= replicas and len(live) == replicas
        reason = (
            "ScaledToZero"
            if replicas == 0
            else "AllReplicasReady"
            if ready >= replicas
            else "ReplicasNotReady"
        )
        conditions = set_condition(
            conditions, "Ready", ready >= replicas, reason, f"{ready}/{replicas} pods ready", now, generation
        )
        conditions = set_condition(
            conditions,
            "Progressing",
            not all_ready,
            "RollingOut" if not all_ready else "Stable",
            f"{len(live)} pods, {ready} ready, {replicas} wanted",
            now,
            generation,
        )
        conditions = set_condition(
            conditions,
            "Degraded",
            bool(errors),
            "ModelFailed" if errors else "AsExpected",
            "; ".join(errors[:5]) if errors else "no model has failed",
            now,
            generation,
        )
    return {
        "replicas": len(live),
        "readyReplicas": ready,
        "ready": f"{ready}/{replicas}",
        "pods": counts,
        "vramBytes": vram,
        "vram": human_bytes(vram),
        "lastUsed": _rfc3339(last_used) if last_used is not None else None,
        "endpoint": endpoint,
        "observedGeneration": generation,
        "conditions": conditions,
    }


def status_changed(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether a status write would change anything we own."""
    return any(current.get(key) != value for key, value in desired.items())
