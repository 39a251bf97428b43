"""A stream's stop flag that also wakes the thread waiting for the stream's next piece (no polling)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable


class Cancel(threading.Event):
    """`threading.Event` that calls its wakers when set: a thread blocked on a stream's replies is woken
    at once, instead of waking every few milliseconds to look (at 16 streams in flight, hundreds of
    wake-ups a second, each taking the GIL from the threads doing work)."""

    def __init__(self) -> None:
        super().__init__()
        self._wakers: list[Callable[[], None]] = []
        self._wakers_lock = threading.Lock()

    def on_set(self, waker: Callable[[], None]) -> Callable[[], None]:
        """Call `waker` when this is set (at once if it is already); returns what unregisters it."""
        with self._wakers_lock:
            self._wakers.append(waker)
        if self.is_set():
            waker()

        def forget() -> None:
            with self._wakers_lock, contextlib.suppress(ValueError):
                self._wakers.remove(waker)

        return forget

    def set(self) -> None:
        super().set()
        with self._wakers_lock:
            wakers = list(self._wakers)
        for waker in wakers:
            waker()
