"""A pretend GPU for tests of the engine's budget (the GpuProbe interface without NVML)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tts_contract import GpuReport


class FakeGpu:
    """A pretend GPU of `total_bytes` for tests of the budget; `used()` says what is taken (e.g. the
    bytes of the engine's models that are on "gpu", plus `used_by_others` for a peer pod)."""

    def __init__(self, total_bytes: int, used: Callable[[], int] | None = None, index: int = 0) -> None:
        self.index = index  # the one CUDA device it pretends to be; others are unknown (None)
        self.total_bytes = total_bytes
        self.used_by_others = 0
        self.used: Callable[[], int] = used or (lambda: 0)

    def available(self) -> bool:
        return True

    def free_bytes(self, index: int | None = None) -> int | None:
        if index not in (None, self.index):
            return None
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
