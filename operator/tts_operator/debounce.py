"""Debouncing: when a pending change may run (pure, clock-driven), and per-key async runs that use it.

Hand-written: the agent's loop needs the decision as a pure function of an injected clock (it must never
block, and its tests turn a fake clock), and the operator a per-key asyncio runner whose runs never
overlap; no well-kept library offers either.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)


class Debouncer:
    """At most one run per `interval`; changes marked before a run fold into it.

    Leading: the first change after a quiet period runs at once, later ones when the interval since the last
    run ends (the agent's publication: news goes out fast, a burst costs two writes). Trailing: a change runs
    `interval` after it was first marked (the operator's status: a burst of events is one write).
    """

    def __init__(
        self, interval: float, *, leading: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if interval < 0:
            raise ValueError(f"the debounce interval must be >= 0 seconds, got {interval}")
        self.interval = interval
        self.leading = leading
        self._clock = clock
        self._marked_at: float | None = None  # the first mark not yet run; None: nothing pending
        self._last_run: float | None = None
        self._not_before = float("-inf")

    @property
    def pending(self) -> bool:
        return self._marked_at is not None

    def mark(self) -> None:
        """Something changed: a run is due (marks until it starts fold into it)."""
        if self._marked_at is None:
            self._marked_at = self._clock()

    def cancel(self) -> None:
        """What was marked needs no run any more (e.g. it changed back)."""
        self._marked_at = None

    def due_at(self) -> float | None:
        if self._marked_at is None:
            return None
        at = self._marked_at + (0.0 if self.leading else self.interval)
        if self._last_run is not None:
            at = max(at, self._last_run + self.interval)
        return max(at, self._not_before)

    def wait_time(self) -> float | None:
        """Seconds until the pending run may start (0: now); None when nothing is pending."""
        at = self.due_at()
        return None if at is None else max(0.0, at - self._clock())

    def due(self) -> bool:
        at = self.due_at()
        return at is not None and self._clock() >= at

    def take(self) -> None:
        """A run starts: what was marked so far is covered by it (marks from now on are for the next)."""
        self._marked_at = None
        self._not_before = float("-inf")

    def ran(self) -> None:
        """A run ended: the next may start an interval from now."""
        self._last_run = self._clock()

    def postpone(self, seconds: float) -> None:
        """The run failed: it stays pending and may start again after `seconds`."""
        self._not_before = self._clock() + seconds


class DebouncedRuns(Generic[K]):
    """Per key: `action(key)` through a trailing Debouncer of `delay`: marks until the run starts fold into
    it, marks during it cause one more run `delay` after it ends. Runs of one key never overlap, and every
    mark is followed by a run that starts after it (so the run sees what it was about). `what` names the
    action in the log line of a failed run."""

    def __init__(self, action: Callable[[K], Awaitable[object]], delay: float, what: str = "action") -> None:
        self.delay = delay
        self.what = what
        self._action = action
        self._keys: dict[K, Debouncer] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def mark(self, key: K) -> None:
        debouncer = self._keys.get(key)
        if debouncer is None:  # no task runs for this key: start one
            debouncer = self._keys[key] = Debouncer(
                self.delay, leading=False, clock=asyncio.get_running_loop().time
            )
            task = asyncio.get_running_loop().create_task(self._run(key, debouncer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        debouncer.mark()

    async def _run(self, key: K, debouncer: Debouncer) -> None:
        try:
            while (wait := debouncer.wait_time()) is not None:
                await asyncio.sleep(wait)
                debouncer.take()
                try:
                    await self._action(key)
                except Exception:  # the level check marks every service again later: it is retried then
                    log.exception("%s of %s failed", self.what, key)
                debouncer.ran()
        finally:
            del self._keys[key]

    def pending(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
