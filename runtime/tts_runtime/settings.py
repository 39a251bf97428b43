"""Runtime settings: `TTS_RUNTIME_*` environment variables, overridden by the flags made from the fields."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tts_contract import MODELS_JSON_ENV, RUNTIME_ENV_PREFIX, ModelSpec, Policy, PolicyPatch
from tts_contract.flags import Flag
from tts_runtime import __version__
from tts_runtime.engine.models_file import ModelsFileError, load_model_specs, parse_model_specs

VERSION = __version__

DEFAULT_MODEL = "hibari"
MAX_INPUT_CHARS = 4096
# The policy a model has unless its spec or a flag says otherwise (the policy flags' help says it).
_SEED = Policy.model_validate({})
# Help sections of the flags; `tts-runtime mcp` takes the MODELS ones only.
MODELS = "models and residency policy"
LIMITS = "security and limits"


def _on(value: bool) -> str:
    return "on" if value else "off"


class ConfigError(ValueError):
    """A configuration value is wrong; the message says which setting and how to fix it."""


class Settings(BaseSettings):
    """Everything `tts-runtime serve` can be told: each field is a flag (tts_contract.flags, help from its
    description) and `TTS_RUNTIME_<FIELD>`; the ones marked env_only are set by the operator alone."""

    model_config = SettingsConfigDict(env_prefix=RUNTIME_ENV_PREFIX, extra="forbid", validate_default=True)

    # Loopback by default: a container sets TTS_RUNTIME_HOST=0.0.0.0 explicitly.
    host: str = Field(default="127.0.0.1", description="interface to bind; a container binds 0.0.0.0")
    port: Annotated[int, Flag(metavar="N")] = Field(default=8000, ge=0, le=65535, description="TCP port")
    # `--model` values: "hibari", "NAME=hibari" or "NAME=module:factory" (a plug-in).
    model: Annotated[list[str], NoDecode, Flag(metavar="SPEC", group=MODELS)] = Field(
        default_factory=list,
        description="a model to serve (repeatable): 'hibari', NAME=hibari, or NAME=module:factory",
    )
    models_file: Annotated[Path | None, Flag(metavar="PATH", group=MODELS)] = Field(
        default=None, description='YAML/JSON file {"models": [ModelSpec, ...]}'
    )
    # What the operator sets: {"models": [ModelSpec, ...]}; used when no flag or file names models.
    models_json: Annotated[str | None, Flag(env_only=True)] = None
    # Policy overrides for every model; None keeps each model's own policy (or the seed default).
    offload_after_use: Annotated[bool | None, Flag(group=MODELS)] = Field(
        default=None,
        description="move weights off the GPU as soon as the last request ends; "
        f"default {_on(_SEED.offload_after_use)}",
    )
    idle_offload_seconds: Annotated[
        float | None, Flag("--idle-offload-seconds", "--gpu-idle-timeout", metavar="S", group=MODELS)
    ] = Field(
        default=None,
        ge=0,
        description="with --no-offload-after-use: offload after S idle seconds; "
        f"default {_SEED.idle_offload_seconds:g}",
    )
    idle_release_seconds: Annotated[float | None, Flag(metavar="S", group=MODELS)] = Field(
        default=None,
        ge=0,
        description="release a model completely after S idle seconds, 0 = never; "
        f"default {_SEED.idle_release_seconds:g}",
    )
    disable_gpu_management: Annotated[bool, Flag(group=MODELS)] = Field(
        default=False, description="traditional mode: preload every model and keep it on the GPU"
    )
    device: Annotated[Literal["auto", "cuda", "cpu"], Flag(group=MODELS)] = Field(
        default="auto", description="where models execute"
    )
    # The pod's share of a shared GPU in bytes (HAMi's or MPS's limit, or memoryBudgetBytes; set by the
    # operator): the runtime keeps its models on the GPU within it. None = the whole GPU.
    gpu_memory_budget_bytes: Annotated[int | None, Flag(env_only=True)] = Field(default=None, ge=0)
    admin_token: Annotated[SecretStr | None, Flag(metavar="TOKEN", group=LIMITS)] = Field(
        default=None, description="bearer token required by admin routes"
    )
    admin_token_file: Annotated[Path | None, Flag(metavar="PATH", group=LIMITS)] = Field(
        default=None,
        description="read the admin token from PATH; generate one there (mode 0600) if it does not exist",
    )
    # Speech requests admitted at once (running + waiting); beyond it 503 + Retry-After.
    max_queue: Annotated[int, Flag(metavar="N", group=LIMITS)] = Field(
        default=64, ge=1, le=100_000, description="speech requests admitted at once; beyond: 503"
    )
    drain_timeout_seconds: Annotated[float, Flag("--drain-timeout", metavar="S", group=LIMITS)] = Field(
        default=30.0, ge=0, description="on SIGTERM wait up to S seconds for requests in flight"
    )
    log_level: Annotated[Literal["critical", "error", "warning", "info", "debug"], Flag(group=LIMITS)] = (
        Field(default="info", description="log verbosity")
    )
    # Seconds between keep-alive comments on the /v1/residency/events stream.
    events_keepalive_seconds: Annotated[float, Flag(env_only=True)] = Field(default=15.0, gt=0)

    @field_validator("model", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        # From the environment a list arrives as one comma-separated string.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("admin_token", mode="after")
    @classmethod
    def _blank_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value().strip() else None

    def policy_patch(self) -> PolicyPatch:
        """The policy fields the operator of this process set for every model."""
        patch: dict[str, Any] = {}
        if self.offload_after_use is not None:
            patch["offload_after_use"] = self.offload_after_use
        if self.idle_offload_seconds is not None:
            patch["idle_offload_seconds"] = self.idle_offload_seconds
        if self.idle_release_seconds is not None:
            patch["idle_release_seconds"] = self.idle_release_seconds
        if self.disable_gpu_management:
            patch["pinned"] = True
        return PolicyPatch.model_validate(patch)

    def model_specs(self) -> list[ModelSpec]:
        """Specs from flags and file; else MODELS_JSON; else the built-in voice; policy overrides applied."""
        try:
            specs: list[ModelSpec] = []
            if self.models_file is not None:
                if not self.models_file.is_file():
                    raise ConfigError(f"--models-file {self.models_file}: no such file")
                specs += load_model_specs(self.models_file)
            specs += [parse_model_flag(value) for value in self.model]
            if not specs and self.models_json:
                specs = parse_model_specs(_load_json(self.models_json), source=MODELS_JSON_ENV)
            if not specs:
                specs = [ModelSpec.model_validate({"name": DEFAULT_MODEL})]
            # Re-checked together: a name may come from the file and from a flag.
            parse_model_specs([spec.to_json() for spec in specs], source="models")
        except ModelsFileError as err:
            raise ConfigError(str(err)) from err
        try:
            patch = self.policy_patch()
            return [spec.model_copy(update={"policy": spec.policy.merged(patch)}) for spec in specs]
        except ValidationError as err:
            problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in err.errors())
            raise ConfigError(f"policy settings (--offload-after-use, --idle-*): {problems}") from None

    def resolve_admin_token(self) -> str | None:
        """The admin token: given directly, read from the token file, or generated into it (0600)."""
        if self.admin_token is not None:
            return self.admin_token.get_secret_value().strip()
        if self.admin_token_file is None:
            return None
        path = self.admin_token_file
        try:
            token = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            token = ""
        except OSError as err:
            raise ConfigError(f"cannot read admin token file {path}: {err.strerror}") from err
        if token:
            return token
        return _write_new_token(path)


def parse_model_flag(value: str) -> ModelSpec:
    """`hibari` | `NAME=hibari` | `NAME=module:factory` (a plug-in) → a model spec."""
    name, sep, target = (part.strip() for part in value.partition("="))
    if not sep and name != DEFAULT_MODEL:
        raise ConfigError(
            f"--model {value!r}: use 'hibari' (the built-in voice), NAME=hibari, "
            "or NAME=module:factory (a plug-in)"
        )
    if not name:
        raise ConfigError(f"--model {value!r}: the model name before '=' is empty")
    if not sep or target == DEFAULT_MODEL:
        return parse_model_specs([{"name": name}], source=f"--model {value!r}")[0]
    return parse_model_specs(
        [{"name": name, "backend": "plugin", "factory": target}], source=f"--model {value!r}"
    )[0]


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{MODELS_JSON_ENV} is not valid JSON: {err}") from err


def _write_new_token(path: Path) -> str:
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: if a peer wrote the file first, its token wins and we read it back.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        existing = path.read_text(encoding="utf-8").strip()
        if existing:
            return existing
        raise ConfigError(
            f"admin token file {path} exists but is empty; delete it or write a token"
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot create admin token file {path}: {err.strerror}") from err
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token
