"""Operator and agent settings: pydantic-settings models read once at start; their fields are the flags."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tts_contract.flags import Flag
from tts_contract.names import ADMIN_TOKEN_FILE, POD_NAME_ENV, POD_NAMESPACE_ENV

RUNTIME_IMAGE = "ghcr.io/residency-dev/residency-runtime:0.1.0"
AGENT_IMAGE = "ghcr.io/residency-dev/residency-operator:0.1.0"
DEFAULT_RUNTIME_URL = "http://127.0.0.1:8000"
# The runtime's one drain budget on SIGTERM (requests in flight, then every model released).
DRAIN_SECONDS = 30.0


class OperatorSettings(BaseSettings):
    """`tts-operator run`: each field is a flag and `RESIDENCY_<FIELD>` (flags win)."""

    model_config = SettingsConfigDict(env_prefix="RESIDENCY_", extra="ignore")

    standalone: bool = Field(False, description="no peering with other operator instances")
    namespace: Annotated[list[str], Flag("-n", "--namespace", metavar="NS")] = Field(
        default_factory=list, description="watch this namespace (repeatable; globs allowed, as in Kopf)"
    )
    all_namespaces: Annotated[bool, Flag("-A", "--all-namespaces")] = Field(
        default=False, description="watch every namespace (the default without -n)"
    )
    liveness: Annotated[str | None, Flag(metavar="URL")] = Field(
        default=None, description="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz"
    )
    verbose: Annotated[bool, Flag("-v", "--verbose")] = Field(default=False, description="log at DEBUG level")
    debug: Annotated[bool, Flag("-d", "--debug")] = Field(
        default=False, description="log at DEBUG level, Kopf internals included"
    )
    runtime_image: str = Field(RUNTIME_IMAGE, min_length=1, description="runtime image of new pods")
    agent_image: str = Field(AGENT_IMAGE, min_length=1, description="agent image of new pods")
    runtime_drain_seconds: float = Field(
        default=DRAIN_SECONDS,
        ge=0,
        description="the runtime's drain budget on SIGTERM; the pods' grace period is this plus a margin",
    )
    # A service's status is recomputed this long after the first event that may change it (a pod's report,
    # a spec change): the events of a storm within it are one write.
    status_seconds: float = Field(0.5, gt=0, description="seconds a status write waits to batch events")
    # The level check: children and pod annotations are compared with what they should be this often.
    recheck_seconds: float = Field(30.0, gt=0, description="seconds between two level checks of a service")
    # Blocking calls in flight at once. asyncio's default executor has min(32, cores + 4) threads, 6 on a
    # 2-core pod: a burst of creates at hundreds of services would queue behind it.
    api_threads: int = Field(32, ge=1, le=1024, description="Kubernetes API calls in flight at once")
    # GPU sharing mode dra watches ResourceClaims and claim templates; auto: where served and allowed.
    dra: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="watch DRA claims: auto (if served and allowed, checked at start), on or off",
    )

    @model_validator(mode="after")
    def _one_scope(self) -> OperatorSettings:
        if self.namespace and self.all_namespaces:
            raise ValueError("--namespace and --all-namespaces exclude each other")
        return self


class AgentSettings(BaseSettings):
    """`tts-operator agent`: each field is a flag; in a pod the defaults come from the downward API."""

    model_config = SettingsConfigDict(env_prefix="RESIDENCY_AGENT_", extra="ignore", populate_by_name=True)

    pod: str | None = Field(
        default=None, validation_alias=AliasChoices(POD_NAME_ENV), description="own pod name"
    )
    namespace: str | None = Field(
        default=None,
        validation_alias=AliasChoices(POD_NAMESPACE_ENV),
        description="own pod namespace",
    )
    runtime_url: str = Field(DEFAULT_RUNTIME_URL, description="the runtime over localhost")
    admin_token_file: str = Field(
        default=ADMIN_TOKEN_FILE,
        validation_alias=AliasChoices("RESIDENCY_ADMIN_TOKEN_FILE"),
        description="bearer token for the runtime's admin routes, written by the runtime at its start",
    )
    health_port: int = Field(8081, ge=0, le=65535, description="/healthz and /readyz (0: any free port)")
    health_host: str = Field("0.0.0.0", description="address of the probe server")
    min_publish_interval: float = Field(
        default=1.0,
        ge=0,
        description="seconds between two writes of the residency annotation (the latest state "
        "always follows)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO",
        validation_alias=AliasChoices("LOG_LEVEL"),
        description="log verbosity",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


_current: OperatorSettings | None = None


def use(settings: OperatorSettings) -> None:
    """Install the settings `tts-operator run` read at start; the handlers module reads them on import."""
    global _current
    _current = settings


def loaded() -> OperatorSettings | None:
    """The settings `tts-operator run` installed, or None (a library use, a test of a pure module)."""
    return _current


def current() -> OperatorSettings:
    if _current is None:
        raise RuntimeError("operator settings not loaded: start the operator with `tts-operator run`")
    return _current
