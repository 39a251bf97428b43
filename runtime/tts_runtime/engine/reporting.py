"""The residency report of one model and of the process, from slot bookkeeping plus NVML."""

from __future__ import annotations

import os
from collections.abc import Iterable

from tts_contract import ModelReport
from tts_runtime.engine.backends import Stats
from tts_runtime.engine.gpu import GpuProbe, NoGpu
from tts_runtime.engine.slot import Slot


def model_report(slot: Slot, now: float, gpu: GpuProbe) -> ModelReport:
    """One model's line; `now` is the engine clock's monotonic time."""
    with slot.cond:
        stats = slot.stats or Stats(device=slot.device)
        # A process other models share: NVML's count is theirs too; the model's line is its own weights.
        ex = slot.executor
        pids = ex.pids() if ex is not None and not ex.shares_process else []
        idle = None
        if slot.leases:
            idle = 0.0
        elif slot.last_active is not None:
            idle = max(0.0, now - slot.last_active)
        report = ModelReport(
            name=slot.spec.name,
            variant=slot.spec.variant,
            state=slot.state,
            device=stats.device,
            vramBytes=stats.vram_bytes,
            hostBytes=stats.host_bytes,
            lastUsed=slot.last_used_wall,
            idleSeconds=idle,
            leases=slot.leases,
            error=slot.error or stats.note,
            policy=slot.policy,
            gpuDemandBytes=slot.demand_bytes if slot.demand_until > now else 0,
            voices=stats.voices or slot.voices,
            transitions=dict(slot.transitions),
        )
    if pids:
        # In a pod without hostPID, NVML names the worker by its host PID, which the worker found when
        # it created its context (`gpu_pids`); NVML's count includes the context. Where the worker could
        # not tell, its own measure (allocator + context) is the better number.
        measured = gpu.process_bytes(stats.gpu_pids or pids)
        if measured is not None and not isinstance(gpu, NoGpu):
            report.vram_bytes = max(measured, report.vram_bytes)
    return report


def process_pids(slots: Iterable[Slot]) -> list[int]:
    """This process and its workers (what NVML per-process accounting sums)."""
    out = [os.getpid()]
    for slot in slots:
        ex = slot.executor
        if ex is not None:
            out.extend(ex.pids())
    return list(dict.fromkeys(out))  # a shared worker once, however many of its models are loaded


def gpu_pids(slots: Iterable[Slot]) -> list[int]:
    """`process_pids` as NVML names them: a worker's host PID where it found it (pods without hostPID)."""
    out = [os.getpid()]
    for slot in slots:
        ex, stats = slot.executor, slot.stats
        if ex is not None:
            out.extend((stats.gpu_pids if stats is not None else None) or ex.pids())
    return list(dict.fromkeys(out))
