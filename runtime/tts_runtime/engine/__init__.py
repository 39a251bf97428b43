"""The GPU residency engine: every model of a runtime process, its leases, verbs, policy and workers."""

from tts_runtime.engine.clock import Clock, SystemClock
from tts_runtime.engine.core import Engine
from tts_runtime.engine.gpu import GpuProbe, NoGpu, NvmlProbe
from tts_runtime.engine.lease import Lease, Synthesis, Transition
from tts_runtime.engine.planning import Action, SlotView, choose_victims, plan_idle

__all__ = [
    "Action",
    "Clock",
    "Engine",
    "GpuProbe",
    "Lease",
    "NoGpu",
    "NvmlProbe",
    "SlotView",
    "Synthesis",
    "SystemClock",
    "Transition",
    "choose_victims",
    "plan_idle",
]
