"""One model's bookkeeping in the engine: state, leases, lock + condition, timings, errors."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

from tts_contract import ModelSpec, Policy, State
from tts_runtime.engine.backends import Stats
from tts_runtime.engine.executor import Executor
from tts_runtime.engine.planning import SlotView


@dataclass(eq=False)
class Slot:
    spec: ModelSpec
    device: str  # where the engine asked it to execute
    cpu_mode: str  # "keep-worker" | "exit-worker" (resolved from "auto")
    policy: Policy
    voices: list[str]
    # A plain Lock: verbs release it while they work, and callbacks run with it released.
    cond: threading.Condition = field(default_factory=lambda: threading.Condition(threading.Lock()))
    state: State = State.UNLOADED
    busy: bool = False  # a verb is running; the state is transient until it ends
    leases: int = 0
    # Admin offloads/releases waiting for the leases to end: new leases wait behind them (no starvation).
    draining_for_admin: int = 0
    executor: Executor | None = None
    pending: Executor | None = None  # the executor of a load in progress (shutdown may have to kill it)
    stats: Stats | None = None
    error: str | None = None
    failures: int = 0
    retry_at: float = 0.0  # monotonic; a request before this gets ModelLoadError without retrying
    last_active: float | None = None  # monotonic: last lease end or verb end (idle timers count from it)
    last_used: float = 0.0  # monotonic of the last lease end (eviction order)
    last_used_wall: datetime | None = None
    used_since_restore: bool = False
    known_bytes: int = 0  # the weights' device size from the last load: what a restore needs on the GPU
    workspace_bytes: int = 0  # device bytes beyond the weights at the peak its worker saw (remembered)
    context_bytes: int = 0  # its worker's CUDA context, measured when the worker created it
    demand_bytes: int = 0
    demand_until: float = 0.0
    transitions: dict[str, float] = field(default_factory=dict)

    def gpu_bytes(self) -> int:
        if self.state != State.GPU or self.stats is None:
            return 0
        return self.stats.vram_bytes or self.stats.host_bytes

    def view(self, now: float) -> SlotView:
        """Snapshot for the pure planners; call with `cond` held."""
        idle = 0.0 if self.leases or self.last_active is None else max(0.0, now - self.last_active)
        state = self.state if not self.busy else State.LOADING  # any transient state: not actionable
        return SlotView(
            name=self.spec.name,
            state=state,
            leases=self.leases,
            idle_seconds=idle,
            policy=self.policy,
            used_since_restore=self.used_since_restore,
            last_used=self.last_used,
            gpu_bytes=self.gpu_bytes(),
        )
