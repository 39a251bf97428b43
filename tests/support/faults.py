"""Factories that fail on purpose: raise, hang, fail N times, or kill their own worker mid-request."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from support.tiny import TinyTTS


def failing_factory(message: str = "injected load failure", **_: Any) -> TinyTTS:
    """`support.faults:failing_factory`: the loader raises."""
    raise RuntimeError(message)


def hanging_factory(hang_seconds: float = 3600.0, **_: Any) -> TinyTTS:
    """`support.faults:hanging_factory`: the loader hangs (past any sane load timeout)."""
    time.sleep(hang_seconds)
    return TinyTTS()


def flaky_factory(counter_path: str, fail_times: int = 1, **options: Any) -> TinyTTS:
    """`support.faults:flaky_factory`: fails the first `fail_times` loads, counted in a file
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
    """`support.faults:crashing_factory`: synthesize("crash") kills the worker."""
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
    """`support.faults:oom_on_restore_factory`: restore hits CUDA OOM `fail_restores` times."""
    return OomOnRestore(**options)


def _wait_for_file(path: str) -> None:
    while not Path(path).exists():
        time.sleep(0.01)


class GatedTTS(TinyTTS):
    """Each synthesize waits until the file `gate` exists (a backlog a test releases at once); with
    `load_gate`, building the model waits for that file too (a slow load); with `count_path`, every
    synthesis that ran is counted in that file (one character per call)."""

    def __init__(
        self, gate: str, count_path: str | None = None, load_gate: str | None = None, **options: Any
    ) -> None:
        if load_gate is not None:
            _wait_for_file(load_gate)
        super().__init__(**options)
        self.gate = gate
        self.count_path = count_path

    def synthesize(self, text: str, voice: str, speed: float) -> tuple[torch.Tensor, int]:
        _wait_for_file(self.gate)
        if self.count_path is not None:
            with open(self.count_path, "a") as f:
                f.write(".")
        return super().synthesize(text, voice, speed)


def gated_factory(**options: Any) -> GatedTTS:
    """`support.faults:gated_factory`: synthesize waits for the file `gate`."""
    return GatedTTS(**options)


class OwnTensorsTTS(TinyTTS):
    """A plug-in as engine.md allows: a tensor of its own outside its modules (`codebook`), moved by its
    restore hook, and a cache of its parameters built once (`cached`); both must work after every restore."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.codebook = torch.linspace(0.5, 1.0, 4)
        self.cached = [self.proj.weight, self.out.weight]

    def residency_offload(self) -> None:
        self.codebook = self.codebook.to("cpu")
        super().residency_offload()

    def residency_restore(self, device: str) -> None:
        self.codebook = self.codebook.to(device)
        super().residency_restore(device)

    def synthesize(self, text: str, voice: str, speed: float) -> tuple[torch.Tensor, int]:
        if any(p is not q for p, q in zip(self.cached, (self.proj.weight, self.out.weight), strict=True)):
            raise RuntimeError("the cached parameters are not the model's parameters any more")
        wave, sr = super().synthesize(text, voice, speed)
        return wave * self.codebook[0].to("cpu") * self.cached[0].to("cpu").abs().mean() * 10, sr


def own_tensors_factory(**options: Any) -> OwnTensorsTTS:
    """`support.faults:own_tensors_factory`."""
    return OwnTensorsTTS(**options)
