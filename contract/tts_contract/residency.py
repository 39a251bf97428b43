"""The residency vocabulary: states, verbs, policy and its patch, the report, the idle-and-freeable rule."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

POLICY_FIELDS = ("offloadAfterUse", "idleOffloadSeconds", "idleReleaseSeconds", "pinned", "priority")
PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
RELEASE_RULE = "idleReleaseSeconds must be 0 (never) or at least idleOffloadSeconds"


class State(StrEnum):
    """Where one model's weights are in one runtime process."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    GPU = "gpu"
    OFFLOADING = "offloading"
    CPU = "cpu"
    RESTORING = "restoring"
    FAILED = "failed"


# How a pod's models make one state for `kubectl get tts` (ResidencyReport.pod_state).
_POD_ORDER = (State.GPU, State.RESTORING, State.LOADING, State.OFFLOADING, State.CPU, State.FAILED)
_COUNTS_AS = {State.RESTORING: State.GPU, State.LOADING: State.GPU, State.OFFLOADING: State.CPU}


class Verb(StrEnum):
    LOAD = "load"  # unloaded|failed -> gpu
    OFFLOAD = "offload"  # gpu -> cpu
    RESTORE = "restore"  # cpu -> gpu
    RELEASE = "release"  # any -> unloaded


# States a verb may start from; anything else is refused (or, where noted by the engine, a no-op).
VERB_SOURCES: dict[Verb, frozenset[State]] = {
    Verb.LOAD: frozenset({State.UNLOADED, State.FAILED}),
    Verb.OFFLOAD: frozenset({State.GPU}),
    Verb.RESTORE: frozenset({State.CPU}),
    Verb.RELEASE: frozenset({State.GPU, State.CPU, State.FAILED, State.UNLOADED}),
}

# The transient state a verb passes through, and where it lands on success.
VERB_PATH: dict[Verb, tuple[State, State]] = {
    Verb.LOAD: (State.LOADING, State.GPU),
    Verb.OFFLOAD: (State.OFFLOADING, State.CPU),
    Verb.RESTORE: (State.RESTORING, State.GPU),
    Verb.RELEASE: (State.UNLOADED, State.UNLOADED),
}

# States in which a freeing verb has something to free (a verb on a transient state would only be refused).
FREES: dict[Verb, frozenset[State]] = {
    Verb.OFFLOAD: frozenset({State.GPU}),
    Verb.RELEASE: frozenset({State.GPU, State.CPU, State.FAILED}),
}


class _Camel(BaseModel):
    """JSON uses camelCase; Python uses snake_case; both spellings are accepted."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class Policy(_Camel):
    """Idle policy of one model; changeable at run time without restart.

    Types are strict (no "true" for a boolean, no 5.0 for an integer) and numbers finite, like the CRD.
    """

    model_config = ConfigDict(populate_by_name=True, extra="forbid", allow_inf_nan=False)

    offload_after_use: bool = Field(True, alias="offloadAfterUse", strict=True)
    idle_offload_seconds: float = Field(600.0, alias="idleOffloadSeconds", ge=0, strict=True)
    idle_release_seconds: float = Field(3600.0, alias="idleReleaseSeconds", ge=0, strict=True)  # 0 = never
    pinned: bool = Field(False, strict=True)
    # Who gives way on a shared GPU: lower priority is offloaded first.
    priority: int = Field(0, ge=PRIORITY_MIN, le=PRIORITY_MAX, strict=True)

    @model_validator(mode="after")
    def _release_after_offload(self) -> Policy:
        # Without offload-after-use a model would be released before its idle offload was ever due.
        if (
            not self.offload_after_use
            and self.idle_release_seconds
            and self.idle_release_seconds < self.idle_offload_seconds
        ):
            raise ValueError(RELEASE_RULE)
        return self

    def merged(self, patch: PolicyPatch) -> Policy:
        """This policy with the fields the patch sets replaced, validated as a whole (ValidationError)."""
        return Policy.model_validate({**self.model_dump(), **patch.model_dump(exclude_unset=True)})

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


class PolicyPatch(_Camel):
    """A partial policy: fields left out keep their current value; an explicit null is refused."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", allow_inf_nan=False)

    offload_after_use: bool | None = Field(None, alias="offloadAfterUse", strict=True)
    idle_offload_seconds: float | None = Field(None, alias="idleOffloadSeconds", ge=0, strict=True)
    idle_release_seconds: float | None = Field(None, alias="idleReleaseSeconds", ge=0, strict=True)
    pinned: bool | None = Field(None, strict=True)
    priority: int | None = Field(None, ge=PRIORITY_MIN, le=PRIORITY_MAX, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = sorted(str(k) for k, v in data.items() if v is None)
            if nulls:
                raise ValueError(f"{', '.join(nulls)}: null is not a value; leave the field out to keep it")
        return data


def idle_and_freeable(state: State, leases: int, policy: Policy, verb: Verb = Verb.OFFLOAD) -> bool:
    """THE rule for "may this model be freed now": it holds what `verb` frees, serves no request (a lease
    means one is running; freeing would fail it), and is not pinned. Engine planning, the agent and the
    operator's sharing plan all ask this."""
    return state in FREES[verb] and leases == 0 and not policy.pinned


class _Report(BaseModel):
    """Reports are read by other processes, maybe of another version: unknown keys are ignored."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class ModelReport(_Report):
    """One model's line in the residency report."""

    name: str
    variant: str = "base"
    state: State = State.UNLOADED
    device: str = ""  # what executes the model: "cuda:0", "cpu"
    vram_bytes: int = Field(0, alias="vramBytes")
    host_bytes: int = Field(0, alias="hostBytes")
    last_used: datetime | None = Field(None, alias="lastUsed")
    idle_seconds: float | None = Field(None, alias="idleSeconds")
    leases: int = 0
    error: str | None = None
    policy: Policy = Field(default_factory=lambda: Policy.model_validate({}))
    # GPU bytes a load/restore of this model is waiting for (or was refused for, within the last minute):
    # the operator reads it to ask an idle peer on the same GPU to offload. 0 when nothing is wanted.
    gpu_demand_bytes: int = Field(0, alias="gpuDemandBytes")
    voices: list[str] = Field(default_factory=list)
    # Seconds the last transition of each verb took, for the status page and bench.
    transitions: dict[str, float] = Field(default_factory=dict)

    def freeable(self, verb: Verb = Verb.OFFLOAD) -> bool:
        return idle_and_freeable(self.state, self.leases, self.policy, verb)


class GpuReport(_Report):
    uuid: str
    index: int = 0
    name: str = ""
    total_bytes: int = Field(0, alias="totalBytes")
    free_bytes: int = Field(0, alias="freeBytes")
    process_bytes: int = Field(0, alias="processBytes")  # this runtime and its workers, per NVML


class ResidencyReport(_Report):
    """`GET /v1/residency`: every model of one runtime process and the GPU it uses."""

    models: list[ModelReport] = Field(default_factory=list)
    gpu: GpuReport | None = None

    @property
    def vram_bytes(self) -> int:
        return sum(m.vram_bytes for m in self.models)

    def pod_state(self) -> State:
        """One state for the pod, for counting: gpu beats cpu beats failed beats unloaded; a model on its
        way counts where it is going (loading and restoring as gpu, offloading as cpu)."""
        states = {m.state for m in self.models}
        for state in _POD_ORDER:
            if state in states:
                return _COUNTS_AS.get(state, state)
        return State.UNLOADED

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)
