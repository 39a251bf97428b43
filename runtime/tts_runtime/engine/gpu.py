"""GPU probe via NVML: free memory and per-process bytes, degrading to "no GPU" without NVML.

The engine process itself never touches CUDA (that would create a context and hold ~500 MB), so all GPU
accounting on the engine side goes through NVML.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tts_contract import GpuReport

log = logging.getLogger(__name__)


def device_index(device: str) -> int | None:
    """ "cuda:1" -> 1, "cuda" -> 0; None for a device that is no GPU."""
    if not device.startswith("cuda"):
        return None
    tail = device.partition(":")[2]
    return int(tail) if tail.isdigit() else 0


class GpuProbe(Protocol):
    def available(self) -> bool: ...

    # `index`: the CUDA device (cuda:N) whose memory is asked about; None = the runtime's first GPU.
    def free_bytes(self, index: int | None = None) -> int | None: ...

    def process_bytes(self, pids: Iterable[int]) -> int | None: ...

    def report(self, pids: Iterable[int]) -> GpuReport | None: ...


class NoGpu:
    """A host without a GPU: no budget check, `gpu: null` in the report."""

    def available(self) -> bool:
        return False

    def free_bytes(self, index: int | None = None) -> int | None:
        return None

    def process_bytes(self, pids: Iterable[int]) -> int | None:
        return None

    def report(self, pids: Iterable[int]) -> GpuReport | None:
        return None


class NvmlProbe:
    """One GPU read through NVML: entry `index` of CUDA_VISIBLE_DEVICES (an index, `GPU-…`/`MIG-…` UUID),
    else NVML index `index`. The engine reads its first GPU; a worker on `cuda:N` reads entry N.

    NVML numbers GPUs in PCI bus order; workers set CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA agrees. `nvml` is
    the `pynvml` module (tests pass a fake with the same calls)."""

    def __init__(self, index: int = 0, nvml: Any = None) -> None:
        self._index = index
        self._lock = threading.Lock()
        self._handle: Any = None
        self._nvml: Any = nvml
        self._tried = False
        self._others: dict[int, Any] = {}  # handles of cuda:N for N > 0, found on first use

    def _other(self, index: int) -> Any:
        """The NVML handle of CUDA device `index` (the index-th of CUDA_VISIBLE_DEVICES), None if unknown."""
        if self._dev() is None:
            return None
        with self._lock:
            if index not in self._others:
                raw = os.environ.get("CUDA_VISIBLE_DEVICES")
                visible = [v.strip() for v in raw.split(",")] if raw is not None else None
                handle = None
                try:
                    if visible is None:
                        handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
                    elif index < len(visible) and visible[index].isdigit():
                        handle = self._nvml.nvmlDeviceGetHandleByIndex(int(visible[index]))
                    elif index < len(visible):
                        handle = self._nvml.nvmlDeviceGetHandleByUUID(visible[index])
                except Exception as e:
                    log.info("no GPU accounting for cuda:%d (%s)", index, e)
                self._others[index] = handle
            return self._others[index]

    def _dev(self) -> Any:
        with self._lock:
            if self._tried:
                return self._handle
            self._tried = True
            raw = os.environ.get("CUDA_VISIBLE_DEVICES")
            entries = [e.strip() for e in (raw or "").split(",")]
            visible = entries[self._index] if self._index < len(entries) else ""
            if raw is not None and not (visible.isdigit() or visible.startswith(("GPU-", "MIG-"))):
                # "", "-1", "NoDevFiles": CUDA sees no GPU here, whatever NVML can see.
                log.info("no GPU accounting (CUDA_VISIBLE_DEVICES=%r hides GPU %d)", raw, self._index)
                return None
            try:
                nv = self._nvml if self._nvml is not None else importlib.import_module("pynvml")
                nv.nvmlInit()
                if visible.startswith(("GPU-", "MIG-")):
                    handle = nv.nvmlDeviceGetHandleByUUID(visible)
                else:
                    idx = int(visible) if visible.isdigit() else self._index
                    handle = nv.nvmlDeviceGetHandleByIndex(idx)
                self._nvml, self._handle = nv, handle
            except Exception as e:  # NVMLError, ImportError, a bad CUDA_VISIBLE_DEVICES: no GPU accounting
                log.info("no GPU accounting (NVML unavailable: %s)", e)
                self._handle = None
            return self._handle

    def available(self) -> bool:
        return self._dev() is not None

    def free_bytes(self, index: int | None = None) -> int | None:
        h = self._dev() if not index else self._other(index)
        if h is None:
            return None
        try:
            return int(self._nvml.nvmlDeviceGetMemoryInfo(h).free)
        except Exception:
            return None

    def processes(self) -> dict[int, int] | None:
        """Every process with a context on this GPU, as NVML names it (host PIDs!) -> bytes it holds."""
        h = self._dev()
        if h is None:
            return None
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(h)
        except Exception:
            return None
        # usedGpuMemory is None where the driver hides it (some vGPU/MIG setups): counted as 0.
        return {int(p.pid): int(p.usedGpuMemory or 0) for p in procs}

    def process_bytes(self, pids: Iterable[int]) -> int | None:
        procs = self.processes()
        if procs is None:
            return None
        return sum(procs.get(pid, 0) for pid in set(pids))

    def report(self, pids: Iterable[int]) -> GpuReport | None:
        h = self._dev()
        if h is None:
            return None
        try:
            nv = self._nvml
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            uuid = nv.nvmlDeviceGetUUID(h)
            name = nv.nvmlDeviceGetName(h)
            return GpuReport(
                uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                index=int(nv.nvmlDeviceGetIndex(h)),
                name=name.decode() if isinstance(name, bytes) else str(name),
                totalBytes=int(mem.total),
                freeBytes=int(mem.free),
                processBytes=self.process_bytes(pids) or 0,
            )
        except Exception as e:
            log.warning("NVML report failed: %s", e)
            return None


@dataclass
class GpuIdentity:
    """How NVML names this process (host PIDs in a container without hostPID) and its context's bytes."""

    pids: list[int] = field(default_factory=list)  # empty: could not tell (another process started too)
    context_bytes: int = 0


def identify_self(
    probe: NvmlProbe | None, create_context: Callable[[], int | None], settle_seconds: float = 0.5
) -> GpuIdentity:
    """Create this process's CUDA context and find which of NVML's processes it is.

    `create_context()` makes the context and returns the device's free bytes after it (`cuMemGetInfo`).
    Inside a pod NVML lists host PIDs, which never equal ours; the entry that appeared when our context
    was created is us. Two processes starting at the same moment are ambiguous: no PID, and the caller
    reports what it measures itself. The context's size is NVML's count for that entry, else the drop
    in free memory across the creation.
    """
    me = os.getpid()
    before = probe.processes() if probe is not None else None
    free0 = probe.free_bytes() if probe is not None else None
    free1 = create_context()
    if before is None:
        return GpuIdentity()
    deadline = time.monotonic() + settle_seconds
    while True:
        after = probe.processes() if probe is not None else None
        new = sorted(set(after or {}) - set(before))
        if new or after is None or time.monotonic() >= deadline:
            break
        time.sleep(0.05)  # the driver lists a new context a moment later on some systems
    pids = [me] if me in new else new if len(new) == 1 else []
    context = (after or {}).get(pids[0], 0) if pids else 0
    if not context and free0 is not None and free1 is not None:
        context = max(0, free0 - free1)
    if not pids:
        log.info("could not tell which GPU process is this one (new on the GPU: %s)", new or "none")
    return GpuIdentity(pids=pids, context_bytes=context)


_identified: dict[int, GpuIdentity] = {}
_identified_lock = threading.Lock()


def identify_once(index: int, create_context: Callable[[], int | None]) -> GpuIdentity:
    """`identify_self` the first time this process makes its context on GPU `index`; afterwards only
    `create_context()`, and the same answer: the models of a shared worker (`workerGroup`) share the one
    context, and a later model must not take "no new process appeared" for "cannot tell"."""
    with _identified_lock:
        known = _identified.get(index)
        if known is None:
            known = _identified[index] = identify_self(NvmlProbe(index), create_context)
            return known
    create_context()
    return known
