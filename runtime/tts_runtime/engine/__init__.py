"""The GPU residency engine: every model of a runtime process, its leases, verbs, policy and workers."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tts_runtime.engine.clock import Clock, SystemClock
    from tts_runtime.engine.core import Engine
    from tts_runtime.engine.gpu import GpuProbe, NoGpu, NvmlProbe
    from tts_runtime.engine.lease import Lease, Synthesis, Transition
    from tts_runtime.engine.planning import Action, SlotView, choose_victims, plan_idle

# Names load on first use: a worker process imports submodules of this package (its loop, its backend)
# and would otherwise import the whole engine it never runs (core, verbs, budget, asyncio) at start.
_HOME = {
    "Action": "planning",
    "Clock": "clock",
    "Engine": "core",
    "GpuProbe": "gpu",
    "Lease": "lease",
    "NoGpu": "gpu",
    "NvmlProbe": "gpu",
    "SlotView": "planning",
    "Synthesis": "lease",
    "SystemClock": "clock",
    "Transition": "lease",
    "choose_victims": "planning",
    "plan_idle": "planning",
}

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


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
