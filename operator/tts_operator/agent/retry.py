"""When a failed action of the agent may next be tried: tenacity's backoff, logged once per outage."""

from __future__ import annotations

import logging
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, wait_random_exponential

log = logging.getLogger("tts_operator.agent")

# The agent's one backoff policy: tenacity's "full jitter" (a random delay in a window that doubles after
# each failure, from `FIRST` seconds up to the cap), so the sidecars of many pods never retry in lockstep,
# not even at the cap. The loop schedules its tries itself (it must never block on one action), so it asks
# the wait strategy for the delay instead of letting tenacity sleep.
FIRST = 0.5
FLOOR = 0.1  # no try comes sooner than this after a failure: never a tight loop


def backoff(cap: float) -> wait_random_exponential:
    return wait_random_exponential(multiplier=FIRST, max=cap, min=FLOOR)


class Retry:
    """An action's next try time and its backoff; logs a failure once per outage, not per try."""

    def __init__(self, what: str, clock: Callable[[], float], cap: float = 30.0) -> None:
        self.what = what
        self._clock = clock
        self._wait = backoff(cap)
        self._attempts = RetryCallState(Retrying(), None, (), {})
        self.at = float("-inf")
        self.error: str | None = None

    @property
    def failures(self) -> int:
        return self._attempts.attempt_number - 1

    def ready(self) -> bool:
        return self._clock() >= self.at

    def failed(self, error: Exception, level: int = logging.WARNING) -> float:
        """Count one more failure; answers the delay before the next try (also kept in `at`): the backoff's,
        or longer when the error carries the server's own `retry_after` (a 429's Retry-After)."""
        delay = max(float(self._wait(self._attempts)), getattr(error, "retry_after", None) or 0.0)
        self._attempts.prepare_for_next_attempt()
        self.at = self._clock() + delay
        if str(error) != self.error:
            log.log(level, "%s failed: %s (retrying with backoff)", self.what, error)
        self.error = str(error)
        return delay

    def ok(self) -> None:
        if self.error is not None:
            log.info("%s works again", self.what)
        self._attempts = RetryCallState(Retrying(), None, (), {})
        self.at = float("-inf")
        self.error = None
