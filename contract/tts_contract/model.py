"""The model spec: what one runtime serves (`ModelSpec`) and what a TTSService asks for (`ServiceModel`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from tts_contract.names import DEVICE_PATTERN, FACTORY_PATTERN, MODEL_NAME_PATTERN, matches
from tts_contract.residency import Policy

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
# What cannot apply to one model of a worker process that other models share: each acts on the process.
SHARED_WORKER_CPU_MODES = frozenset({"auto", "keep-worker"})

FACTORY_RULE = (
    "model.factory ('package.module:callable') is required for backends torch and plugin, not for hibari"
)


class _ModelBase(BaseModel):
    """Which model and how to build it: the part a TTSService and a runtime's models file share."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    name: str
    variant: str = Field("base", max_length=63)
    backend: Backend = "hibari"
    factory: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not matches(MODEL_NAME_PATTERN, v):
            raise ValueError(
                f"model name {v!r} must be 1-63 letters, digits, '.', '_' or '-', first a letter/digit"
            )
        return v

    @field_validator("factory")
    @classmethod
    def _factory(cls, v: str | None) -> str | None:
        if v is not None and not matches(FACTORY_PATTERN, v):
            raise ValueError(f"factory {v!r} must be 'package.module:callable' (e.g. 'my_tts.model:build')")
        return v

    @model_validator(mode="after")
    def _backend_needs(self) -> _ModelBase:
        if self.backend != "hibari" and self.factory is None:
            raise ValueError(f"model {self.name!r}: backend {self.backend!r} needs factory: {FACTORY_RULE}")
        if self.backend == "hibari" and self.factory is not None:
            raise ValueError(f"model {self.name!r}: backend 'hibari' takes no factory: {FACTORY_RULE}")
        return self


class ModelSpec(_ModelBase):
    """One model a runtime serves (models file, `TTS_RUNTIME_MODELS_JSON`); camelCase or snake_case keys."""

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
    # Models that name the same group live in one worker process (host RAM: one interpreter, one set of
    # imports, one CUDA context); each keeps its own state and verbs. None: the model's own worker.
    worker_group: str | None = None
    device: str | None = None  # overrides the engine's device for this model ("cpu", "cuda:1")
    estimated_bytes: int | None = Field(None, ge=0)  # GPU bytes a first load needs (budget check)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is not None and not matches(DEVICE_PATTERN, v):
            raise ValueError(f"device {v!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return v

    @field_validator("worker_group")
    @classmethod
    def _worker_group(cls, v: str | None) -> str | None:
        if v is not None and not matches(MODEL_NAME_PATTERN, v):
            raise ValueError(
                f"workerGroup {v!r} must be 1-63 letters, digits, '.', '_' or '-', first a letter/digit"
            )
        return v

    @model_validator(mode="after")
    def _shared_worker(self) -> ModelSpec:
        if self.worker_group is None:
            return self
        if self.execution != "worker":
            raise ValueError(
                f"model {self.name!r}: workerGroup needs execution 'worker' (an inline model runs in the "
                "engine's process, not in a worker)"
            )
        if self.cpu_mode not in SHARED_WORKER_CPU_MODES:
            raise ValueError(
                f"model {self.name!r}: cpuMode {self.cpu_mode!r} ends or suspends the whole worker process, "
                f"so it cannot apply to one model of workerGroup {self.worker_group!r}; use cpuMode "
                "keep-worker (or auto), or leave workerGroup unset for a worker of its own"
            )
        return self

    @model_validator(mode="after")
    def _default_voice(self) -> ModelSpec:
        if self.default_voice and self.voices and self.default_voice not in self.voices:
            raise ValueError(f"model {self.name!r}: defaultVoice {self.default_voice!r} is not in voices")
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def worker_group_problem(specs: list[ModelSpec]) -> str | None:
    """Why these models cannot share their worker processes as their `workerGroup`s say, or None. One
    process serves one device: the models of a group must name the same `device`."""
    devices: dict[str, dict[str, list[str]]] = {}
    for s in specs:
        if s.worker_group is not None:
            dev = "auto" if s.device in (None, "auto") else s.device
            devices.setdefault(s.worker_group, {}).setdefault(dev, []).append(s.name)
    for group, by_device in devices.items():
        if len(by_device) > 1:
            seen = "; ".join(f"{dev}: {', '.join(names)}" for dev, names in sorted(by_device.items()))
            return (
                f"the models of workerGroup {group!r} name different devices ({seen}); one worker process "
                "serves one device: give them the same device or different workerGroups"
            )
    return None


class PvcSource(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    claim_name: str = Field(min_length=1)
    sub_path: str = ""


class ModelSource(BaseModel):
    """Where the weights come from: a URI the runtime fetches (hf://, https://) or a PVC mounted read-only."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    uri: str | None = Field(None, min_length=1)
    pvc: PvcSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if (self.uri is None) == (self.pvc is None):
            raise ValueError("set exactly one of model.source.uri or model.source.pvc")
        return self


class ServiceModel(_ModelBase):
    """`spec.model` of a TTSService: the model plus where its weights come from."""

    source: ModelSource | None = None

    def model_spec(self, weights_dir: str) -> ModelSpec:
        """The runtime's spec of this model; a PVC is mounted at `weights_dir`. The policy is left out on
        purpose (the agent applies `spec.residency`; a policy edit must not roll the pods out)."""
        options = dict(self.options)
        if self.source is not None and self.source.uri is not None:
            options.setdefault("weights", self.source.uri)
        elif self.source is not None and self.source.pvc is not None:
            options.setdefault("weights", f"{weights_dir}/{self.source.pvc.sub_path}".rstrip("/"))
        return ModelSpec.model_validate(
            {
                "name": self.name,
                "variant": self.variant,
                "backend": self.backend,
                "factory": self.factory,
                "options": options,
            }
        )
