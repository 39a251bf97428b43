"""The pod annotations the operator and the agent exchange: keys, typed values, parse and dump."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

GROUP = "tts.residency.dev"
VERSION = "v1alpha1"
PLURAL = "ttsservices"

RESIDENCY = f"{GROUP}/residency"  # agent -> operator
POLICY = f"{GROUP}/policy"  # operator -> agent
GPU_SHARE = f"{GROUP}/gpu-share"  # operator -> agent
OFFLOAD_REQUEST = f"{GROUP}/offload-request"  # operator -> agent; the agent removes it when done

PLACEMENT_GATE = f"{GROUP}/placement"  # scheduling gate: the operator sets the pod's preferred nodes first

SERVICE_LABEL = f"{GROUP}/service"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "tts-operator"
NAME_LABEL = "app.kubernetes.io/name"
NAME = "residency"


class _Lenient(BaseModel):
    """Annotations come from other processes (maybe other versions): unknown keys are kept, not fatal."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")


class PolicyValue(BaseModel):
    """`tts.residency.dev/policy`: the residency policy of DESIGN.md, camelCase."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    offload_after_use: bool = Field(True, alias="offloadAfterUse")
    idle_offload_seconds: float = Field(600, alias="idleOffloadSeconds", ge=0)
    idle_release_seconds: float = Field(3600, alias="idleReleaseSeconds", ge=0)
    pinned: bool = False
    priority: int = 0


class ModelResidency(_Lenient):
    name: str
    variant: str = "base"
    state: str = "unloaded"
    device: str | None = None
    vram_bytes: int = Field(0, alias="vramBytes")
    host_bytes: int = Field(0, alias="hostBytes")
    last_used: datetime | None = Field(None, alias="lastUsed")
    idle_seconds: float | None = Field(None, alias="idleSeconds")
    leases: int = 0
    error: str | None = None
    policy: PolicyValue | None = None
    gpu_demand_bytes: int = Field(0, alias="gpuDemandBytes")


class GpuResidency(_Lenient):
    uuid: str
    index: int = 0
    total_bytes: int = Field(0, alias="totalBytes")
    free_bytes: int = Field(0, alias="freeBytes")
    process_bytes: int = Field(0, alias="processBytes")


class ResidencyValue(_Lenient):
    """`tts.residency.dev/residency`: the runtime's residency report plus when the agent published it."""

    models: list[ModelResidency] = Field(default_factory=list)
    gpu: GpuResidency | None = None
    updated: datetime | None = None

    @property
    def vram_bytes(self) -> int:
        return sum(m.vram_bytes for m in self.models)

    def pod_state(self) -> str:
        """One word for the pod, for counting: gpu beats cpu beats unloaded (failed counts apart)."""
        states = {m.state for m in self.models}
        for state in ("gpu", "restoring", "loading", "offloading", "cpu", "failed"):
            if state in states:
                return {"restoring": "gpu", "loading": "gpu", "offloading": "cpu"}.get(state, state)
        return "unloaded"


class Peer(_Lenient):
    pod: str  # "namespace/name"
    service: str
    resident_bytes: int = Field(0, alias="residentBytes")
    priority: int = 0


class GpuShareValue(_Lenient):
    """`tts.residency.dev/gpu-share`: the pod's sharing group and what its peers on the same GPU hold."""

    group: str  # "<node>/<gpu>"
    node: str
    gpu: str  # the GPU's UUID (HAMi, the runtime's report), or DRA's "<driver>/<pool>/<device>"
    # Where the group came from: the scheduler's decision (hami: its allocation annotation; dra: the claim's
    # allocation) or, where the device layer says nothing, the runtime's report.
    source: Literal["hami", "dra", "report"] = "report"
    budget_bytes: int | None = Field(None, alias="budgetBytes")
    peers: list[Peer] = Field(default_factory=list)


class OffloadRequestValue(_Lenient):
    """`tts.residency.dev/offload-request`: asks an idle pod to free its GPU for a peer."""

    id: str
    verb: Literal["offload", "release"] = "offload"
    requested_by: str = Field("", alias="requestedBy")
    reason: str = ""
    created: datetime | None = None


V = TypeVar("V", bound=BaseModel)


def parse(model: type[V], raw: str | None) -> V | None:
    """The annotation's value, or None when it is absent or not valid JSON of that shape."""
    if not raw:
        return None
    try:
        return model.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        return None


def dump(value: BaseModel) -> str:
    """Compact, deterministic JSON (sorted keys) so an unchanged value never causes a patch."""
    data: Any = value.model_dump(mode="json", by_alias=True, exclude_none=False)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def now() -> datetime:
    return datetime.now(UTC)
