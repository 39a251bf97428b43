"""The residency vocabulary of DESIGN.md as typed values: states, verbs, policy, report, errors."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class State(StrEnum):
    """Where one model's weights are in one runtime process."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    GPU = "gpu"
    OFFLOADING = "offloading"
    CPU = "cpu"
    RESTORING = "restoring"
    FAILED = "failed"


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


class _Camel(BaseModel):
    """JSON uses camelCase (DESIGN.md); Python uses snake_case; both spellings are accepted."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class Policy(_Camel):
    """Idle policy of one model; changeable at run time without restart."""

    offload_after_use: bool = Field(True, alias="offloadAfterUse")
    idle_offload_seconds: float = Field(600.0, alias="idleOffloadSeconds", ge=0)
    idle_release_seconds: float = Field(3600.0, alias="idleReleaseSeconds", ge=0)  # 0 = never
    pinned: bool = False
    priority: int = Field(0, ge=-1000, le=1000)

    def merged(self, patch: PolicyPatch) -> Policy:
        """This policy with the fields the patch sets replaced."""
        return self.model_copy(update=patch.model_dump(exclude_unset=True, by_alias=False))

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


class PolicyPatch(_Camel):
    """A partial policy: fields left out keep their current value."""

    offload_after_use: bool | None = Field(None, alias="offloadAfterUse")
    idle_offload_seconds: float | None = Field(None, alias="idleOffloadSeconds", ge=0)
    idle_release_seconds: float | None = Field(None, alias="idleReleaseSeconds", ge=0)
    pinned: bool | None = None
    priority: int | None = Field(None, ge=-1000, le=1000)


class ModelReport(_Camel):
    """One model's line in the residency report."""

    name: str
    variant: str = "base"
    state: State
    device: str  # what executes the model: "cuda:0", "cpu"
    vram_bytes: int = Field(0, alias="vramBytes")
    host_bytes: int = Field(0, alias="hostBytes")
    last_used: datetime | None = Field(None, alias="lastUsed")
    idle_seconds: float | None = Field(None, alias="idleSeconds")
    leases: int = 0
    error: str | None = None
    policy: Policy
    # GPU bytes a load/restore of this model is waiting for (or was refused for, within the last minute):
    # the operator reads it to ask an idle peer on the same GPU to offload. 0 when nothing is wanted.
    gpu_demand_bytes: int = Field(0, alias="gpuDemandBytes")
    voices: list[str] = Field(default_factory=list)
    # Seconds the last transition of each verb took, for the status page and bench.
    transitions: dict[str, float] = Field(default_factory=dict)


class GpuReport(_Camel):
    uuid: str
    index: int
    name: str = ""
    total_bytes: int = Field(alias="totalBytes")
    free_bytes: int = Field(alias="freeBytes")
    process_bytes: int = Field(alias="processBytes")  # this runtime and its workers, per NVML


class ResidencyReport(_Camel):
    models: list[ModelReport]
    gpu: GpuReport | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class ResidencyError(Exception):
    """Base of the engine's errors; `status` is the HTTP status the server maps it to."""

    status: int = 500


class UnknownModelError(ResidencyError, KeyError):
    status = 404


class InvalidTransitionError(ResidencyError):
    """A verb asked of a model in a state it cannot start from (e.g. offload while unloaded)."""

    status = 409


class InsufficientGpuMemoryError(ResidencyError):
    """Not enough free GPU memory even after offloading this process's idle models."""

    status = 503

    def __init__(self, message: str, *, needed_bytes: int, free_bytes: int, retry_after: float = 5.0):
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        self.retry_after = retry_after


class ModelLoadError(ResidencyError):
    """The model could not be loaded; the model is `failed` and the next request retries after backoff."""

    status = 503

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class WorkerCrashedError(ResidencyError):
    """The worker process died while serving a request; the model recovers on the next one."""

    status = 503


class BusyError(ResidencyError):
    """Too many requests queued for the model (bounded queue)."""

    status = 503

    def __init__(self, message: str, *, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class InvalidRequestError(ResidencyError, ValueError):
    """The request itself is wrong (unknown voice, empty text, bad speed); the message says what to fix."""

    status = 400
