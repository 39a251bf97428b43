"""The GPU memory budget: make room for a load or restore by offloading idle peers, or refuse it.

Two limits: the memory free on the GPU (NVML), and the pod's share of the GPU (`memory_budget_bytes`: what
it was scheduled with, HAMi's or MPS's limit or memoryBudgetBytes, passed by the operator). The share is
counted from this process's own models, so it holds without NVML and where nothing else enforces it
(time-slicing)."""

from __future__ import annotations

from collections.abc import Callable

from tts_contract import Verb
from tts_runtime.engine.backends import Stats
from tts_runtime.engine.clock import Clock
from tts_runtime.engine.errors import InsufficientGpuMemoryError
from tts_runtime.engine.gpu import GpuProbe, device_index
from tts_runtime.engine.planning import choose_victims
from tts_runtime.engine.reporting import gpu_pids
from tts_runtime.engine.slot import Slot

DEMAND_TTL = 60.0  # seconds a refused GPU demand stays in the report for the operator to see


class GpuBudget:
    """Checks free GPU memory (NVML, never CUDA) before a model moves onto the GPU."""

    def __init__(
        self,
        slots: dict[str, Slot],
        gpu: GpuProbe,
        clock: Clock,
        wait_seconds: float,
        memory_budget_bytes: int | None = None,
    ) -> None:
        self._slots = slots
        self.gpu = gpu
        self.clock = clock
        self.wait_seconds = wait_seconds
        self.memory_budget_bytes = memory_budget_bytes
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
        if new_process and self._group_has_context(slot):
            new_process = False  # a load into a shared worker that a peer keeps: its context exists
        context = (slot.context_bytes or self.context_bytes) if new_process else 0
        return weights + slot.workspace_bytes + context

    def _group_has_context(self, slot: Slot) -> bool:
        """Whether another model of `slot`'s `workerGroup` holds the shared process (and so its context)."""
        group = slot.spec.worker_group
        return group is not None and any(
            s is not slot and s.spec.worker_group == group and s.executor is not None
            for s in self._slots.values()
        )

    def remember(self, slot: Slot, stats: Stats | None) -> None:
        """Keep what a worker measured (workspace peak, context) for the next load or restore."""
        if stats is None:
            return
        slot.workspace_bytes = max(slot.workspace_bytes, stats.workspace_bytes)
        if stats.context_bytes:
            slot.context_bytes = self.context_bytes = stats.context_bytes

    def held_bytes(self, but: Slot | None = None) -> int:
        """GPU bytes this process holds apart from `but`: its models on the GPU (each one's NVML count, else
        its weights' size), or NVML's count for the engine and all its workers when that is more (it also
        sees the CUDA context an offloaded keep-worker model keeps). `but` is never on the GPU while it is
        being made room for, so NVML's count holds none of its weights."""
        total = 0
        for s in self._slots.values():
            if s is not but:
                with s.cond:
                    total += s.gpu_bytes()
        # Under the PIDs NVML knows them by (host PIDs in a pod without hostPID: `gpu.identify_self`).
        seen = self.gpu.process_bytes(gpu_pids(self._slots.values()))
        return max(total, seen or 0)

    def _over_share(self, slot: Slot, needed: int) -> int:
        """How many bytes `needed` more would go beyond the pod's share (0: within it, or no share)."""
        if self.memory_budget_bytes is None:
            return 0
        return max(0, self.held_bytes(but=slot) + needed - self.memory_budget_bytes)

    def _evict_for(
        self, slot: Slot, short: int, evict: Callable[[Slot], object], index: int | None = None
    ) -> None:
        """Offload idle peers worth `short` bytes; with `index`, only peers on that GPU (others free nothing
        there)."""
        now = self.clock.monotonic()
        views = []
        for s in self._slots.values():
            if s is slot or (index is not None and device_index(s.device) != index):
                continue
            with s.cond:
                views.append(s.view(now))
        for v in choose_victims(views, short):
            evict(self._slots[v.name])

    def ensure(self, slot: Slot, needed: int, evict: Callable[[Slot], object]) -> None:
        """Make room for `needed` bytes (`evict`ing idle peers of this process) or raise the refusal."""
        index = device_index(slot.device)
        if needed <= 0 or index is None:
            return
        over = self._over_share(slot, needed)
        if over > 0:
            # Only this process's own models count against its share: offloading them is the one remedy (a
            # peer pod freeing memory does not enlarge the share, so no demand is published for it).
            self._evict_for(slot, over, evict)
            over = self._over_share(slot, needed)
            if over > 0:
                held = self.held_bytes(but=slot)
                raise self.refuse(
                    slot,
                    needed,
                    f"the pod's GPU share is {self.memory_budget_bytes} bytes and its "
                    f"other models hold {held} that cannot be offloaded now",
                    demand=False,
                )
        free = self.gpu.free_bytes(index)  # the model's own GPU: cuda:1 is never budgeted on GPU 0
        if free is None or free >= needed:
            self.clear_demand(slot)
            return
        self._evict_for(slot, needed - free, evict, index)
        free = self.gpu.free_bytes(index) or 0
        deadline = self.clock.monotonic() + self.wait_seconds
        if free < needed and self.wait_seconds > 0:
            # Say what we wait for, so the operator can ask an idle peer pod to offload meanwhile.
            self.set_demand(slot, needed)
            while free < needed and self.clock.monotonic() < deadline:
                self.clock.sleep(0.25)
                free = self.gpu.free_bytes(index) or 0
        if free < needed:
            raise self.refuse(slot, needed, f"{free} bytes free on {slot.device}", free)
        self.clear_demand(slot)

    def refuse(
        self, slot: Slot, needed: int, why: str, free: int | None = None, *, demand: bool = True
    ) -> InsufficientGpuMemoryError:
        """The error for a model that does not fit; its demand stays in the report for DEMAND_TTL (unless
        `demand` is False: what is short is the pod's own share, which no peer can give)."""
        if demand:
            self.set_demand(slot, needed)
        else:
            self.clear_demand(slot)
        return InsufficientGpuMemoryError(
            f"not enough GPU memory for model {slot.spec.name!r}: needs {needed} bytes, {why} after "
            "offloading "
            "this runtime's idle models; retry later",
            needed_bytes=needed,
            free_bytes=free if free is not None else (self.gpu.free_bytes(device_index(slot.device)) or 0),
            retry_after=5.0,
        )

    def set_demand(self, slot: Slot, needed: int) -> None:
        with slot.cond:
            slot.demand_bytes = needed
            slot.demand_until = self.clock.monotonic() + DEMAND_TTL

    def clear_demand(self, slot: Slot) -> None:
        with slot.cond:
            slot.demand_bytes = 0
