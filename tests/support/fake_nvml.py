"""A fake of the `pynvml` calls the runtime makes, seen from inside a pod: processes carry host PIDs."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any


@dataclass
class FakeNvml:
    """One GPU of `total` bytes; `procs` maps a PID *as the host numbers it* to the bytes it holds."""

    total: int = 80 << 30
    procs: dict[int, int] = field(default_factory=dict)
    uuid: str = "GPU-fake-0"
    calls: list[str] = field(default_factory=list)

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        if index != 0:
            raise RuntimeError(f"NVML: no GPU {index}")
        return "h0"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        if uuid != self.uuid:
            raise RuntimeError(f"NVML: no GPU {uuid}")
        return "h0"

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[Any]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self.procs.items()]

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:
        used = sum(self.procs.values())
        return SimpleNamespace(total=self.total, free=self.total - used, used=used)

    def nvmlDeviceGetUUID(self, handle: str) -> str:
        return self.uuid

    def nvmlDeviceGetName(self, handle: str) -> str:
        return "Fake H200"

    def nvmlDeviceGetIndex(self, handle: str) -> int:
        return 0

    def free(self) -> int:
        return int(self.nvmlDeviceGetMemoryInfo("h0").free)
