"""The TTSService spec as typed values, parsed at the boundary with messages that say what to fix."""

from __future__ import annotations

from typing import Any, Literal

from kubernetes.utils import parse_quantity
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tts_contract import MAX_SERVICE_NAME_LENGTH, RESERVED_ENV, Policy, ServiceModel


class InvalidSpecError(ValueError):
    """The TTSService cannot be reconciled as written; the message says which field to fix and how."""


class _Spec(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


MIB = 2**20


def quantity_bytes(value: str | int) -> int:
    """A Kubernetes quantity ("8Gi", "1500M", 4096) as whole bytes; ValueError when it is not one."""
    return int(parse_quantity(value))  # type: ignore[no-untyped-call]


SharingMode = Literal["exclusive", "timeSlicing", "hami", "dra"]


class DraSpec(_Spec):
    """DRA (`resource.k8s.io/v1`): a ResourceClaimTemplate the operator owns, or an existing shared claim."""

    device_class_name: str = Field("gpu.nvidia.com", alias="deviceClassName", min_length=1)
    driver: str = Field("gpu.nvidia.com", min_length=1)  # the opaque config's driver (NVIDIA's GpuConfig)
    # NVIDIA's GpuConfig sharing strategy; None = the device as the driver gives it (no config).
    strategy: Literal["TimeSlicing", "MPS"] | None = None
    interval: Literal["Default", "Short", "Medium", "Long"] | None = None  # TimeSlicing only
    # Every pod uses this existing ResourceClaim (one device shared by all its consumers); no template.
    resource_claim_name: str | None = Field(None, alias="resourceClaimName", min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> DraSpec:
        if self.interval is not None and self.strategy != "TimeSlicing":
            raise ValueError("gpu.sharing.dra.interval applies to strategy TimeSlicing only")
        if self.resource_claim_name is not None and self.strategy is not None:
            raise ValueError(
                "with gpu.sharing.dra.resourceClaimName the shared claim carries the sharing "
                "settings: remove gpu.sharing.dra.strategy"
            )
        return self


class SharingSpec(_Spec):
    """How pods get their GPU and what share of it: the scheduler's and the device layer's business."""

    mode: SharingMode = "exclusive"
    # The share of GPU memory per pod (a Kubernetes quantity, e.g. "8Gi"): HAMi's nvidia.com/gpumem, the MPS
    # pinned-memory limit, DRA's capacity request; in every mode the runtime's budget.
    memory: str | int | None = None
    cores: int | None = Field(None, ge=1, le=100)  # HAMi nvidia.com/gpucores; MPS active thread percentage
    # preferIdle: new pods are held by a scheduling gate until the operator gives them a preferred node
    # affinity for the nodes whose idle models could free the most GPU memory.
    placement: Literal["scheduler", "preferIdle"] = "scheduler"
    dra: DraSpec | None = None

    @field_validator("memory")
    @classmethod
    def _quantity(cls, value: str | int | None) -> str | int | None:
        if value is None:
            return None
        try:
            amount = quantity_bytes(value)
        except ValueError:
            raise ValueError(f"gpu.sharing.memory must be a quantity such as 8Gi, got {value!r}") from None
        if amount < MIB:
            raise ValueError("gpu.sharing.memory must be at least 1Mi")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SharingSpec:
        if self.mode in ("hami", "timeSlicing") and self.memory is None:
            raise ValueError(
                f"gpu.sharing.memory is required for mode {self.mode}: "
                + (
                    "HAMi limits each pod to it (nvidia.com/gpumem)"
                    if self.mode == "hami"
                    else "time-slicing isolates no memory, the runtime's budget is the only limit"
                )
            )
        mps = self.mode == "dra" and self.dra is not None and self.dra.strategy == "MPS"
        if self.cores is not None and self.mode != "hami" and not mps:
            raise ValueError(
                "gpu.sharing.cores applies to mode hami (nvidia.com/gpucores) or mode dra with "
                "dra.strategy MPS (active thread percentage)"
            )
        if self.dra is not None and self.mode != "dra":
            raise ValueError("gpu.sharing.dra applies to mode dra only")
        return self

    @property
    def memory_bytes(self) -> int | None:
        """The share in bytes, in whole MiB (HAMi's unit; what every mode renders and budgets)."""
        return None if self.memory is None else quantity_bytes(self.memory) // MIB * MIB

    @property
    def claim(self) -> DraSpec:
        return self.dra or DraSpec.model_validate({})


class GpuSpec(_Spec):
    count: int = Field(1, ge=0, le=16)
    resource_name: str = Field("nvidia.com/gpu", alias="resourceName", min_length=1)
    # What this service's pods may keep resident on a shared GPU; None = no budget.
    memory_budget_bytes: int | None = Field(None, alias="memoryBudgetBytes", ge=0)
    sharing: SharingSpec = Field(default_factory=lambda: SharingSpec.model_validate({}))

    @model_validator(mode="after")
    def _shared_needs_a_gpu(self) -> GpuSpec:
        if self.sharing.mode != "exclusive" and self.count < 1:
            raise ValueError(f"gpu.sharing.mode {self.sharing.mode} needs gpu.count of at least 1")
        return self

    @property
    def budget_bytes(self) -> int | None:
        """The runtime's GPU budget: the share it is scheduled with, or memoryBudgetBytes (the smaller)."""
        if self.count == 0:
            return None
        found = [b for b in (self.sharing.memory_bytes, self.memory_budget_bytes) if b is not None]
        return min(found) if found else None


class EnvVar(_Spec):
    model_config = ConfigDict(populate_by_name=True, extra="allow")
    name: str = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_ENV:
            raise ValueError(f"env {value} is set by the operator; remove it from spec.env")
        return value


class TTSServiceSpec(_Spec):
    model: ServiceModel
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, alias="imagePullPolicy"
    )
    replicas: int = Field(1, ge=0, le=100)
    gpu: GpuSpec = Field(default_factory=lambda: GpuSpec.model_validate({}))
    residency: Policy = Field(default_factory=lambda: Policy.model_validate({}))
    port: int = Field(8000, ge=1, le=65535)
    resources: dict[str, Any] = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after", "function-before"))


def parse_spec(raw: Any, name: str = "") -> TTSServiceSpec:
    """The spec, or InvalidSpecError listing every problem as `spec.<field>: <what to fix>`."""
    problems: list[str] = []
    if name and len(name) > MAX_SERVICE_NAME_LENGTH:
        problems.append(
            f"metadata.name: at most {MAX_SERVICE_NAME_LENGTH} characters (children add suffixes)"
        )
    try:
        spec = TTSServiceSpec.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        for err in exc.errors():
            where = _location(err["loc"])
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"spec.{where}: {message}" if where else f"spec: {message}")
        raise InvalidSpecError("; ".join(problems)) from None
    if problems:
        raise InvalidSpecError("; ".join(problems))
    return spec
