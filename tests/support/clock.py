"""A manual clock for engine tests: time moves only when the test says so."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta


class ManualClock:
    """Time moves only when a test says so (`advance`); `sleep` advances instead of waiting."""

    def __init__(self, start: datetime | None = None) -> None:
        self._t = 1000.0
        self._start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._t

    def now(self) -> datetime:
        with self._lock:
            return self._start + timedelta(seconds=self._t - 1000.0)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)
