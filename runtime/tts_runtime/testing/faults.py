"""Factories that fail on purpose: raise, hang, fail N times, or kill their own worker mid-request."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from tts_runtime.testing.tiny import TinyTTS


def failing_factory(message: str = "injected load failure", **_: Any) -> TinyTTS:
    """`tts_runtime.testing.faults:failing_factory`: the loader raises."""
    raise RuntimeError(message)


def hanging_factory(hang_seconds: float = 3600.0, **_: Any) -> TinyTTS:
    """`tts_runtime.testing.faults:hanging_factory`: the loader hangs (past any sane load timeout)."""
    time.sleep(hang_seconds)
    return TinyTTS()


def flaky_factory(counter_path: str, fail_times: int = 1, **options: Any) -> TinyTTS:
    """`tts_runtime.testing.faults:flaky_factory`: fails the first `fail_times` loads, counted in a file
    (so the count survives worker processes), then builds a TinyTTS."""
    p = Path(counter_path)
    n = int(p.read_text() or 0) if p.exists() else 0
    p.write_text(str(n + 1))
    if n < fail_times:
        raise RuntimeError(f"injected failure {n + 1} of {fail_times}")
    return TinyTTS(**options)


class CrashingTTS(TinyTTS):
    """Exits its process without a word when asked to say "crash" (a worker dying mid-request)."""

    def synthesize(self, text: str, voice: str, speed: float) -> tuple[torch.Tensor, int]:
        if text == "crash":
            os._exit(17)
        return super().synthesize(text, voice, speed)


def crashing_factory(**options: Any) -> CrashingTTS:
    """`tts_runtime.testing.faults:crashing_factory`: synthesize("crash") kills the worker."""
    return CrashingTTS(**options)


class OomOnRestore(TinyTTS):
    """Runs out of "GPU memory" on restores 2 .. 1 + fail_restores (restore 1 is the load's), after every
    tensor has moved; with `error` set it raises RuntimeError(error) instead (a failure that is no OOM).
    With `counter_path` the restores are counted in that file, across worker processes (exit-worker)."""

    def __init__(
        self,
        fail_restores: int = 1,
        error: str | None = None,
        counter_path: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.fail_restores = fail_restores
        self.error = error
        self.counter = Path(counter_path) if counter_path else None  # counts across worker processes
        self.restores = 0

    def residency_restore(self, device: str) -> None:
        if self.counter is not None:
            self.restores = int(self.counter.read_text() or 0) if self.counter.exists() else 0
            self.counter.write_text(str(self.restores + 1))
        self.restores += 1
        if 2 <= self.restores <= 1 + self.fail_restores:
            if self.error is not None:
                raise RuntimeError(self.error)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        super().residency_restore(device)


def oom_on_restore_factory(**options: Any) -> OomOnRestore:
    """`tts_runtime.testing.faults:oom_on_restore_factory`: restore hits CUDA OOM `fail_restores` times."""
    return OomOnRestore(**options)
