"""The pod annotations the operator and the agent exchange: keys, typed values, lenient parse, dump."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tts_contract.names import GROUP
from tts_contract.residency import ResidencyReport, Verb

# Keys. Who writes each: the agent the report, the operator the rest (the agent removes a served request).
RESIDENCY = f"{GROUP}/residency"  # agent -> operator: ResidencyValue
POLICY = f"{GROUP}/policy"  # operator -> agent: Policy (spec.residency)
GPU_SHARE = f"{GROUP}/gpu-share"  # operator -> agent: GpuShareValue
OFFLOAD_REQUEST = f"{GROUP}/offload-request"  # operator -> agent: OffloadRequestValue


class _Lenient(BaseModel):
    """Annotations come from other processes (maybe other versions): unknown keys are kept, not fatal."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")


class ResidencyValue(ResidencyReport):
    """`tts.residency.dev/residency`: the runtime's residency report plus when the agent published it."""

    updated: datetime | None = None


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
    verb: Literal[Verb.OFFLOAD, Verb.RELEASE] = Verb.OFFLOAD
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
