"""The TTSService spec as typed values, parsed at the boundary with messages that say what to fix."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tts_operator.annotations import PolicyValue

# Env names the operator sets itself; a user value would silently break the pod.
RESERVED_ENV = ("TTS_RUNTIME_MODELS_JSON", "TTS_RUNTIME_ADMIN_TOKEN", "TTS_RUNTIME_ADMIN_TOKEN_FILE",
                "POD_NAME", "POD_NAMESPACE")
# Children append "-agent" (6 chars) to the name and must stay valid DNS labels (63).
MAX_NAME_LENGTH = 57
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class InvalidSpecError(ValueError):
    """The TTSService cannot be reconciled as written; the message says which field to fix and how."""


class _Spec(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class PvcSource(_Spec):
    claim_name: str = Field(alias="claimName", min_length=1)
    sub_path: str = Field("", alias="subPath")


class ModelSource(_Spec):
    """Where the weights come from: a URI the runtime fetches (hf://, https://) or a PVC mounted read-only."""

    uri: str | None = None
    pvc: PvcSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if (self.uri is None) == (self.pvc is None):
            raise ValueError("set exactly one of model.source.uri or model.source.pvc")
        return self


class ModelSpec(_Spec):
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")
    variant: str = "base"
    backend: Literal["hibari", "torch", "plugin"] = "hibari"
    factory: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    source: ModelSource | None = None

    @model_validator(mode="after")
    def _plugin_needs_factory(self) -> ModelSpec:
        if self.backend == "plugin" and not self.factory:
            raise ValueError("model.factory ('module:callable') is required when model.backend is 'plugin'")
        if self.factory is not None and not _FACTORY.match(self.factory):
            raise ValueError(f"model.factory must look like 'module:callable', got {self.factory!r}")
        return self


class GpuSpec(_Spec):
    count: int = Field(1, ge=0, le=16)
    resource_name: str = Field("nvidia.com/gpu", alias="resourceName", min_length=1)
    # What this service's pods may keep resident on a shared GPU; None = no budget.
    memory_budget_bytes: int | None = Field(None, alias="memoryBudgetBytes", ge=0)


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
    model: ModelSpec
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, alias="imagePullPolicy")
    replicas: int = Field(1, ge=0, le=100)
    gpu: GpuSpec = Field(default_factory=lambda: GpuSpec.model_validate({}))
    residency: PolicyValue = Field(default_factory=lambda: PolicyValue.model_validate({}))
    port: int = Field(8000, ge=1, le=65535)
    resources: dict[str, Any] = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)

    @model_validator(mode="after")
    def _release_after_offload(self) -> TTSServiceSpec:
        policy = self.residency
        if (not policy.offload_after_use and policy.idle_release_seconds
                and policy.idle_release_seconds < policy.idle_offload_seconds):
            raise ValueError("residency.idleReleaseSeconds must be 0 (never) or at least idleOffloadSeconds")
        return self


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after", "function-before"))


def parse_spec(raw: Any, name: str = "") -> TTSServiceSpec:
    """The spec, or InvalidSpecError listing every problem as `spec.<field>: <what to fix>`."""
    problems: list[str] = []
    if name and len(name) > MAX_NAME_LENGTH:
        problems.append(f"metadata.name: at most {MAX_NAME_LENGTH} characters (children add suffixes)")
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
