"""The GPU residency engine: every model of a runtime process, its leases, verbs, policy and workers."""

from tts_runtime.engine.clock import Clock, ManualClock, SystemClock
from tts_runtime.engine.core import Engine
from tts_runtime.engine.gpu import FakeGpu, GpuProbe, NoGpu, NvmlProbe
from tts_runtime.engine.lease import Lease, Synthesis, Transition
from tts_runtime.engine.planning import Action, SlotView, choose_victims, plan_idle
from tts_runtime.engine.spec import (
    ModelsFileError,
    ModelSpec,
    load_model_specs,
    parse_model_specs,
    spec_from_cli,
)

__all__ = [
    "Action",
    "Clock",
    "Engine",
    "FakeGpu",
    "GpuProbe",
    "Lease",
    "ManualClock",
    "ModelSpec",
    "ModelsFileError",
    "NoGpu",
    "NvmlProbe",
    "SlotView",
    "Synthesis",
    "SystemClock",
    "Transition",
    "choose_victims",
    "load_model_specs",
    "parse_model_specs",
    "plan_idle",
    "spec_from_cli",
]
