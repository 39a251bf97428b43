"""What a runtime serves: `ModelSpec` and the models-file / TTS_RUNTIME_MODELS_JSON parsers."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from tts_runtime.residency import Policy

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")

Backend = Literal["hibari", "torch", "plugin"]
# Where a model's host copy lives while it is `cpu` (docs/engine.md weighs the two):
#   keep-worker: the worker process keeps the host copy and (with CUDA) its CUDA context;
#   exit-worker: the host copy moves to shared memory owned by the engine and the worker exits;
#   suspend: the worker is checkpointed by the CUDA driver (0 GPU bytes, the process kept warm); only
#            where the engine's start-up probe proves the driver supports it, else keep-worker;
#   auto: the engine's choice (keep-worker today: it restores in well under a second).
CpuMode = Literal["auto", "keep-worker", "exit-worker", "suspend"]
# worker: execution in a worker process the engine owns (release -> 0 GPU bytes);
# inline: in the engine's own process (tests, or hosts where a subprocess is not wanted).
Execution = Literal["worker", "inline"]


class ModelSpec(BaseModel):
    """One model a runtime serves; JSON/YAML accept camelCase or snake_case keys."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    name: str
    variant: str = "base"
    backend: Backend = "hibari"
    factory: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    voices: list[str] = Field(default_factory=list)
    default_voice: str | None = None
    policy: Policy = Field(default_factory=lambda: Policy.model_validate({}))
    load_timeout_seconds: float = Field(120.0, gt=0)
    # A TTS client gives up long before 5 minutes; a stuck worker is killed after this and restarts.
    request_timeout_seconds: float | None = Field(60.0, gt=0)
    cpu_mode: CpuMode = "auto"
    # exit-worker only: keep a warm standby process (imports done, no CUDA, nothing mapped) while `cpu`, so
    # restore skips the spawn and `import torch`; it costs host RAM (~the imports' RSS), never GPU bytes.
    standby_worker: bool = True
    execution: Execution = "worker"
    device: str | None = None  # overrides the engine's device for this model ("cpu", "cuda:1")
    estimated_bytes: int | None = Field(None, ge=0)  # GPU bytes a first load needs (budget check)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                f"model name {v!r} must be 1-63 letters, digits, '.', '_' or '-', first a letter/digit"
            )
        return v

    @field_validator("factory")
    @classmethod
    def _factory(cls, v: str | None) -> str | None:
        if v is not None and not _FACTORY.match(v):
            raise ValueError(
                f"factory {v!r} must be 'package.module:callable' (e.g. 'tts_runtime.testing.tiny:factory')"
            )
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(auto|cpu|cuda(:\d+)?)$", v):
            raise ValueError(f"device {v!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return v

    @model_validator(mode="after")
    def _backend_needs(self) -> ModelSpec:
        if self.backend in ("torch", "plugin") and not self.factory:
            raise ValueError(
                f"model {self.name!r}: backend {self.backend!r} needs factory: 'module:callable'"
            )
        if self.backend == "hibari" and self.factory:
            raise ValueError(f"model {self.name!r}: backend 'hibari' takes no factory (use backend: plugin)")
        if self.default_voice and self.voices and self.default_voice not in self.voices:
            raise ValueError(f"model {self.name!r}: defaultVoice {self.default_voice!r} is not in voices")
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class ModelsFileError(ValueError):
    """A models file or TTS_RUNTIME_MODELS_JSON that cannot be used; the message says what to fix."""


def parse_model_specs(data: Any, *, source: str = "models") -> list[ModelSpec]:
    """`{"models": [...]}` (or a bare list) -> specs, with names unique."""
    if isinstance(data, dict):
        unknown = set(data) - {"models"}
        if unknown:
            raise ModelsFileError(
                f"{source}: unknown top-level keys {sorted(unknown)}; expected only 'models'"
            )
        data = data.get("models")
    if not isinstance(data, list) or not data:
        raise ModelsFileError(
            f"{source}: expected {{'models': [ {{'name': ...}}, ... ]}} with at least one model"
        )
    specs: list[ModelSpec] = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            item = {"name": item}
        try:
            specs.append(ModelSpec.model_validate(item))
        except ValidationError as e:
            errs = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<model>'}: {err['msg']}" for err in e.errors()
            )
            raise ModelsFileError(f"{source}: models[{i}]: {errs}") from None
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise ModelsFileError(f"{source}: model name {s.name!r} appears twice; names must be unique")
        seen.add(s.name)
    return specs


def load_model_specs(text_or_path: str | os.PathLike[str]) -> list[ModelSpec]:
    """Specs from a YAML/JSON models file path, or from YAML/JSON text (TTS_RUNTIME_MODELS_JSON)."""
    raw = os.fspath(text_or_path)
    source = "models"
    stripped = raw.strip()
    if stripped and stripped[0] not in "{[" and "\n" not in stripped:
        path = Path(stripped)
        if not path.exists():
            raise ModelsFileError(f"models file {stripped!r} does not exist")
        raw, source = path.read_text(encoding="utf-8"), stripped
    try:
        data = json.loads(raw) if raw.lstrip()[:1] in "{[" else yaml.safe_load(raw)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ModelsFileError(f"{source}: not valid JSON/YAML: {e}") from None
    return parse_model_specs(data, source=source)


def spec_from_cli(value: str) -> ModelSpec:
    """`name=module:factory` or `name` (hibari) from a command-line `--model` flag."""
    name, _, factory = value.partition("=")
    if factory:
        return parse_model_specs([{"name": name, "backend": "plugin", "factory": factory}], source="--model")[
            0
        ]
    return parse_model_specs([{"name": name}], source="--model")[0]
