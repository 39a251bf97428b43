"""The agent's retry schedule: tenacity's full-jitter backoff, doubling windows to a cap, reset on success."""

from __future__ import annotations

import logging

import pytest

from tts_operator.agent.retry import FIRST, FLOOR, Retry
from tts_operator.kube import KubeApiError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delays_stay_in_windows_that_double_up_to_the_cap() -> None:
    clock = FakeClock()
    retry = Retry("x", clock, cap=4.0)
    for n in range(1, 9):
        delay = retry.failed(RuntimeError("down"))
        assert FLOOR <= delay <= min(4.0, FIRST * 2 ** (n - 1))
        assert retry.at == clock.now + delay and not retry.ready()
        assert retry.failures == n
    clock.now += 4.0
    assert retry.ready()


def test_the_cap_keeps_its_jitter_so_sidecars_never_retry_in_lockstep() -> None:
    retry = Retry("x", FakeClock(), cap=4.0)
    for _ in range(10):
        retry.failed(RuntimeError("down"))
    at_cap = {retry.failed(RuntimeError("down")) for _ in range(50)}
    assert all(FLOOR <= d <= 4.0 for d in at_cap)
    assert len(at_cap) > 40  # random draws, not one clamped value
    assert max(at_cap) - min(at_cap) > 1.0


def test_success_resets_the_window_and_a_long_outage_never_overflows() -> None:
    clock = FakeClock()
    retry = Retry("x", clock, cap=30.0)
    for _ in range(5000):
        assert retry.failed(RuntimeError("down")) <= 30.0
    retry.ok()
    assert retry.failures == 0 and retry.ready()
    assert retry.failed(RuntimeError("down")) <= FIRST


def test_an_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    retry = Retry("reading the runtime", FakeClock())
    with caplog.at_level(logging.INFO, logger="tts_operator.agent"):
        for _ in range(5):
            retry.failed(RuntimeError("connection refused"))
        retry.failed(RuntimeError("HTTP 503"), logging.ERROR)
        retry.ok()
        retry.ok()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines == [
        (logging.WARNING, "reading the runtime failed: connection refused (retrying with backoff)"),
        (logging.ERROR, "reading the runtime failed: HTTP 503 (retrying with backoff)"),
        (logging.INFO, "reading the runtime works again"),
    ]


def test_the_servers_retry_after_is_a_floor() -> None:
    retry = Retry("x", FakeClock())
    assert retry.failed(KubeApiError(429, "slow down", retry_after=7.0)) == 7.0
    assert retry.failed(KubeApiError(503, "down")) <= 1.0  # no hint: the backoff's own window
