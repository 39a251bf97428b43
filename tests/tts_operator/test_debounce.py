"""The one debouncer: when a pending change may run (leading or trailing), and per-key async runs on it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from support.procs import until
from tts_operator.debounce import DebouncedRuns, Debouncer
from tts_operator.kube import KubeApiError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_trailing_runs_an_interval_after_the_first_mark_and_folds_the_rest() -> None:
    clock = FakeClock()
    debounce = Debouncer(0.5, leading=False, clock=clock)
    assert debounce.wait_time() is None and not debounce.due()
    debounce.mark()
    clock.now += 0.4
    debounce.mark()  # folds into the first: the window does not move
    assert not debounce.due() and debounce.wait_time() == pytest.approx(0.1)
    clock.now += 0.1
    assert debounce.due()
    debounce.take()
    assert not debounce.pending and debounce.wait_time() is None
    debounce.mark()  # during the run: one more run, an interval after the run ends
    clock.now += 2.0
    debounce.ran()
    assert debounce.wait_time() == pytest.approx(0.5)


def test_leading_runs_at_once_after_quiet_then_once_per_interval() -> None:
    clock = FakeClock()
    debounce = Debouncer(1.0, leading=True, clock=clock)
    debounce.mark()
    assert debounce.due()
    debounce.take()
    debounce.ran()
    clock.now += 0.2
    debounce.mark()
    assert debounce.wait_time() == pytest.approx(0.8)  # the interval since the last run
    clock.now += 5.0
    assert debounce.due()


def test_cancel_drops_a_pending_run_and_postpone_delays_it() -> None:
    clock = FakeClock()
    debounce = Debouncer(0.0, leading=True, clock=clock)
    debounce.mark()
    debounce.cancel()
    assert not debounce.due() and debounce.wait_time() is None
    debounce.mark()
    debounce.postpone(3.0)
    clock.now += 2.9
    assert not debounce.due()
    clock.now += 0.1
    assert debounce.due()
    with pytest.raises(ValueError, match="interval"):
        Debouncer(-1.0, leading=True)


def test_marks_within_the_delay_are_one_run_and_a_mark_during_a_run_is_one_more() -> None:
    async def scenario() -> list[tuple[str, str]]:
        log: list[tuple[str, str]] = []
        release = asyncio.Event()

        async def action(key: str) -> None:
            log.append(("start", key))
            if len(log) == 1:
                await release.wait()
            log.append(("end", key))

        debounce = DebouncedRuns(action, 0.01)
        for _ in range(5):
            debounce.mark("a")
        debounce.mark("b")
        await until(lambda: ("end", "b") in log)  # b, marked with a, has had its delay and its run
        assert log.count(("start", "a")) == 1 and ("end", "a") not in log  # a's first run is held open
        debounce.mark("a")
        debounce.mark("a")
        release.set()
        await until(lambda: log.count(("end", "a")) == 2 and debounce.pending() == 0)
        await debounce.close()
        return log

    log = run(scenario())
    assert [e for e in log if e[1] == "a"] == [("start", "a"), ("end", "a"), ("start", "a"), ("end", "a")]
    assert [e for e in log if e[1] == "b"] == [("start", "b"), ("end", "b")]


def test_a_failing_action_is_logged_and_the_key_can_run_again() -> None:
    async def scenario() -> int:
        calls = 0

        async def action(key: str) -> None:
            nonlocal calls
            calls += 1
            raise KubeApiError(500, "boom")

        debounce = DebouncedRuns(action, 0.0)
        debounce.mark("a")
        await until(lambda: calls == 1 and debounce.pending() == 0)
        debounce.mark("a")
        await until(lambda: calls == 2 and debounce.pending() == 0)
        await debounce.close()
        return calls

    assert run(scenario()) == 2
