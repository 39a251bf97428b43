"""Capped, jittered exponential backoff for retrying the runtime and the Kubernetes API."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays that double after each failure up to a cap, with jitter so sidecars never retry in lockstep."""

    def __init__(
        self,
        initial: float = 0.5,
        cap: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.2,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if initial <= 0 or cap < initial or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff needs 0 < initial <= cap, factor >= 1 and 0 <= jitter < 1")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self._rand = rand
        self._failures = 0

    @property
    def failures(self) -> int:
        return self._failures

    def next(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        base = min(self.cap, self.initial * self.factor**self._failures)
        # Bounded so a long outage never overflows the float power.
        self._failures = min(self._failures + 1, 64)
        # Symmetric jitter around the base, never above the cap.
        spread = base * self.jitter * (2 * self._rand() - 1)
        return min(self.cap, max(0.0, base + spread))

    def reset(self) -> None:
        self._failures = 0
