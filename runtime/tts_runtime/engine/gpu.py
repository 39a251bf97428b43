"""GPU probe via NVML: free memory and per-process bytes, degrading to "no GPU" without NVML.

The engine process itself never touches CUDA (that would create a context and hold ~500 MB), so all GPU
accounting on the engine side goes through NVML.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from tts_runtime.residency import GpuReport

log = logging.getLogger(__name__)


class GpuProbe(Protocol):
    def available(self) -> bool: ...

    def free_bytes(self) -> int | None: ...

    def process_bytes(self, pids: Iterable[int]) -> int | None: ...

    def report(self, pids: Iterable[int]) -> GpuReport | None: ...


class NoGpu:
    """A host without a GPU: no budget check, `gpu: null` in the report."""

    def available(self) -> bool:
        return False

    def free_bytes(self) -> int | None:
        return None

    def process_bytes(self, pids: Iterable[int]) -> int | None:
        return None

    def report(self, pids: Iterable[int]) -> GpuReport | None:
        return None


class NvmlProbe:
    """The GPU this runtime uses (first of CUDA_VISIBLE_DEVICES, else index `index`), read through NVML.

    NVML numbers GPUs in PCI bus order; workers set CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA agrees."""

    def __init__(self, index: int = 0) -> None:
        self._index = index
        self._lock = threading.Lock()
        self._handle: Any = None
        self._nvml: Any = None
        self._tried = False

    def _dev(self) -> Any:
        with self._lock:
            if self._tried:
                return self._handle
            self._tried = True
            raw = os.environ.get("CUDA_VISIBLE_DEVICES")
            visible = (raw or "").split(",")[0].strip()
            if raw is not None and not (visible.isdigit() or visible.startswith(("GPU-", "MIG-"))):
                # "", "-1", "NoDevFiles": CUDA sees no GPU here, whatever NVML can see.
                log.info("no GPU accounting (CUDA_VISIBLE_DEVICES=%r hides every GPU)", raw)
                return None
            try:
                import pynvml

                pynvml.nvmlInit()
                if visible.startswith(("GPU-", "MIG-")):
                    handle = pynvml.nvmlDeviceGetHandleByUUID(visible)
                else:
                    idx = int(visible) if visible.isdigit() else self._index
                    handle = pynvml.nvmlDeviceGetHandleByIndex(idx)
                self._nvml, self._handle = pynvml, handle
            except Exception as e:  # NVMLError, ImportError, a bad CUDA_VISIBLE_DEVICES: no GPU accounting
                log.info("no GPU accounting (NVML unavailable: %s)", e)
                self._handle = None
            return self._handle

    def available(self) -> bool:
        return self._dev() is not None

    def free_bytes(self) -> int | None:
        h = self._dev()
        if h is None:
            return None
        try:
            return int(self._nvml.nvmlDeviceGetMemoryInfo(h).free)
        except Exception:
            return None

    def process_bytes(self, pids: Iterable[int]) -> int | None:
        h = self._dev()
        if h is None:
            return None
        wanted = set(pids)
        total = 0
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(h)
        except Exception:
            return None
        for p in procs:
            if p.pid in wanted and p.usedGpuMemory:  # usedGpuMemory is None where the driver hides it
                total += int(p.usedGpuMemory)
        return total

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


class FakeGpu:
    """A pretend GPU of `total_bytes` for tests of the budget; `used()` says what is taken (e.g. the
    bytes of the engine's models that are on "gpu", plus `used_by_others` for a peer pod)."""

    def __init__(self, total_bytes: int, used: Callable[[], int] | None = None) -> None:
        self.total_bytes = total_bytes
        self.used_by_others = 0
        self.used: Callable[[], int] = used or (lambda: 0)

    def available(self) -> bool:
        return True

    def free_bytes(self) -> int | None:
        return max(0, self.total_bytes - self.used_by_others - self.used())

    def process_bytes(self, pids: Iterable[int]) -> int | None:
        return self.used()

    def report(self, pids: Iterable[int]) -> GpuReport | None:
        return GpuReport(
            uuid="GPU-fake",
            index=0,
            name="fake",
            totalBytes=self.total_bytes,
            freeBytes=self.free_bytes() or 0,
            processBytes=self.used(),
        )
