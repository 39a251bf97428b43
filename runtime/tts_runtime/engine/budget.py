"""The GPU memory budget: make room for a load or restore by offloading idle peers, or refuse it."""

from __future__ import annotations

from collections.abc import Callable

from tts_runtime.engine.backends import Stats
from tts_runtime.engine.clock import Clock
from tts_runtime.engine.gpu import GpuProbe
from tts_runtime.engine.planning import choose_victims
from tts_runtime.engine.slot import Slot
from tts_runtime.residency import InsufficientGpuMemoryError, Verb

DEMAND_TTL = 60.0  # seconds a refused GPU demand stays in the report for the operator to see


class GpuBudget:
    """Checks free GPU memory (NVML, never CUDA) before a model moves onto the GPU."""

    def __init__(self, slots: dict[str, Slot], gpu: GpuProbe, clock: Clock, wait_seconds: float) -> None:
        self._slots = slots
        self.gpu = gpu
        self.clock = clock
        self.wait_seconds = wait_seconds
        self.context_bytes = 0  # the last CUDA context any worker measured: the estimate for a new one

    def needed(self, slot: Slot, verb: Verb) -> int:
        """GPU bytes a load or restore takes: the weights (from the last load, else `estimatedBytes`;
        unknown = 0, no check), plus the workspace the model used at its peak, plus a CUDA context
        when the verb makes one (any load in a worker; an exit-worker restore; a resumed checkpoint)."""
        weights = slot.known_bytes or slot.spec.estimated_bytes or 0
        if weights <= 0:
            return 0
        new_process = slot.spec.execution == "worker" and (
            verb == Verb.LOAD or slot.cpu_mode in ("exit-worker", "suspend")
        )
        context = (slot.context_bytes or self.context_bytes) if new_process else 0
        return weights + slot.workspace_bytes + context

    def remember(self, slot: Slot, stats: Stats | None) -> None:
        """Keep what a worker measured (workspace peak, context) for the next load or restore."""
        if stats is None:
            return
        slot.workspace_bytes = max(slot.workspace_bytes, stats.workspace_bytes)
        if stats.context_bytes:
            slot.context_bytes = self.context_bytes = stats.context_bytes

    def ensure(self, slot: Slot, needed: int, evict: Callable[[Slot], object]) -> None:
        """Make room for `needed` bytes (`evict`ing idle peers of this process) or raise the refusal."""
        if needed <= 0 or not slot.device.startswith("cuda"):
            return
        free = self.gpu.free_bytes()
        if free is None or free >= needed:
            self.clear_demand(slot)
            return
        now = self.clock.monotonic()
        views = []
        for s in self._slots.values():
            if s is slot:
                continue
            with s.cond:
                views.append(s.view(now))
        for v in choose_victims(views, needed - free):
            evict(self._slots[v.name])
        free = self.gpu.free_bytes() or 0
        deadline = self.clock.monotonic() + self.wait_seconds
        if free < needed and self.wait_seconds > 0:
            # Say what we wait for, so the operator can ask an idle peer pod to offload meanwhile.
            self.set_demand(slot, needed)
            while free < needed and self.clock.monotonic() < deadline:
                self.clock.sleep(0.25)
                free = self.gpu.free_bytes() or 0
        if free < needed:
            raise self.refuse(slot, needed, f"{free} bytes free", free)
        self.clear_demand(slot)

    def refuse(
        self, slot: Slot, needed: int, why: str, free: int | None = None
    ) -> InsufficientGpuMemoryError:
        """The error for a model that does not fit; its demand stays in the report for DEMAND_TTL."""
        self.set_demand(slot, needed)
        return InsufficientGpuMemoryError(
            f"not enough GPU memory for model {slot.spec.name!r}: needs {needed} bytes, {why} after "
            "offloading "
            "this runtime's idle models; retry later",
            needed_bytes=needed,
            free_bytes=free if free is not None else (self.gpu.free_bytes() or 0),
            retry_after=5.0,
        )

    def set_demand(self, slot: Slot, needed: int) -> None:
        with slot.cond:
            slot.demand_bytes = needed
            slot.demand_until = self.clock.monotonic() + DEMAND_TTL

    def clear_demand(self, slot: Slot) -> None:
        with slot.cond:
            slot.demand_bytes = 0
