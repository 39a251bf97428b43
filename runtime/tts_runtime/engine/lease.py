"""What requests hold and get: `Lease`, `Synthesis`, and the `Transition` events the engine emits."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from tts_contract import State, Verb

if TYPE_CHECKING:
    from tts_runtime.engine.core import Engine
    from tts_runtime.engine.slot import Slot


@dataclass(frozen=True)
class Synthesis:
    samples: np.ndarray  # float32 mono
    sample_rate: int
    model: str
    voice: str | None
    seconds: float  # time spent synthesizing


@dataclass(frozen=True)
class Transition:
    """Emitted after every verb, failed ones included (`ok` False, `error` set)."""

    model: str
    verb: Verb
    from_state: State
    to_state: State
    seconds: float
    ok: bool
    error: str | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class Lease:
    """A hold on one model: while any lease is open the model is neither offloaded nor released."""

    def __init__(self, engine: Engine, slot: Slot) -> None:
        self._engine = engine
        self._slot = slot
        self._closed = False
        self._close_lock = threading.Lock()
        self.model = slot.spec.name

    def synthesize(
        self,
        text: str,
        voice: str | None = None,
        speed: float = 1.0,
        cancel: threading.Event | None = None,
    ) -> Synthesis:
        """The whole clip. Setting `cancel` (from any thread) stops a model whose stream joins to its
        whole clip (hibari) between two pieces, raising `RequestCancelled`; other models finish it."""
        if self._closed:
            raise RuntimeError("this lease has ended; take a new one with engine.lease(...)")
        t0 = time.perf_counter()
        samples, sr = self._engine._synthesize(self._slot, text, voice, speed, cancel)
        return Synthesis(samples, sr, self.model, voice, time.perf_counter() - t0)

    def stream(
        self,
        text: str,
        voice: str | None = None,
        speed: float = 1.0,
        cancel: threading.Event | None = None,
    ) -> Generator[Synthesis, None, None]:
        """The audio of `text` in pieces, in order, each as soon as the model made it (`seconds`: the
        wait for that piece). Keep the lease open until the generator ends. Setting `cancel` (from any
        thread) or closing the generator stops the synthesis of the rest within one piece's time, so a
        client that goes away costs no more. A model without its own streaming goes segment by segment."""
        if self._closed:
            raise RuntimeError("this lease has ended; take a new one with engine.lease(...)")
        chunks = self._engine._synthesize_stream(self._slot, text, voice, speed, cancel)
        try:
            while True:
                t0 = time.perf_counter()
                item = next(chunks, None)
                if item is None:
                    return
                samples, rate = item
                yield Synthesis(samples, rate, self.model, voice, time.perf_counter() - t0)
        finally:
            chunks.close()

    async def asynthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> Synthesis:
        return await asyncio.to_thread(self.synthesize, text, voice, speed)

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._engine._end_lease(self._slot)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
