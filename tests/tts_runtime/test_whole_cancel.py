"""A whole-clip request whose client went away stops between two pieces, where the model's stream joins to
its whole clip (`stream_joins_whole`); other models finish the clip. Same audio either way."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from support.procs import wait_for
from tts_contract import ModelSpec
from tts_runtime.engine import Engine
from tts_runtime.engine.cancel import Cancel
from tts_runtime.engine.dispatch import Dispatcher
from tts_runtime.engine.errors import RequestCancelled

PIECES = "support.tiny:pieces_factory"
WORDS = " ".join(f"word{n}" for n in range(20))


class Pieces:
    """A backend whose stream is ten pieces; after the first it waits for `go_on` (the test's turn)."""

    def __init__(self, joins: bool) -> None:
        self.stream_joins_whole = joins
        self.made = 0
        self.first = threading.Event()
        self.go_on = threading.Event()
        self.closed = False
        self.whole_calls = 0

    def synthesize(self, text: str, voice: str | None, speed: float) -> tuple[np.ndarray, int]:
        self.whole_calls += 1
        return np.repeat(np.arange(10, dtype=np.float32), 4), 8000

    def synthesize_stream(
        self, text: str, voice: str | None, speed: float
    ) -> Iterator[tuple[np.ndarray, int]]:
        try:
            for i in range(10):
                self.made += 1
                yield np.full(4, i, np.float32), 8000
                if i == 0:
                    self.first.set()
                    self.go_on.wait(30)
        finally:
            self.closed = True


def call_in_thread(d: Dispatcher, cancel: Cancel) -> tuple[threading.Thread, list[Any]]:
    got: list[Any] = []

    def run() -> None:
        try:
            got.append(d.call("synthesize", "text", None, 1.0, cancel=cancel))
        except BaseException as e:
            got.append(e)

    t = threading.Thread(target=run)
    t.start()
    return t, got


def test_a_whole_request_runs_as_the_stream_and_gives_the_same_clip() -> None:
    backend = Pieces(joins=True)
    backend.go_on.set()
    samples, rate = Dispatcher(backend).call("synthesize", "text", None, 1.0, cancel=Cancel())
    assert rate == 8000 and samples.tobytes() == backend.synthesize("text", None, 1.0)[0].tobytes()
    assert backend.made == 10 and backend.closed and backend.whole_calls == 1  # the one above only


def test_a_cancelled_whole_request_stops_between_two_pieces() -> None:
    backend = Pieces(joins=True)
    cancel = Cancel()
    t, got = call_in_thread(Dispatcher(backend), cancel)
    assert backend.first.wait(30)
    cancel.set()  # the client went away while the model made its second piece
    backend.go_on.set()
    t.join(30)
    assert isinstance(got[0], RequestCancelled), got
    assert backend.made == 2 and backend.closed  # 2 of 10 pieces, and the stream was closed


def test_a_whole_request_cancelled_before_it_ran_makes_no_piece() -> None:
    backend = Pieces(joins=True)
    cancel = Cancel()
    cancel.set()  # its client left while it queued for the model
    with pytest.raises(RequestCancelled):
        Dispatcher(backend).call("synthesize", "text", None, 1.0, cancel=cancel)
    assert backend.made == 0 and backend.whole_calls == 0


def test_a_model_that_does_not_say_its_stream_joins_finishes_its_clip() -> None:
    backend = Pieces(joins=False)
    cancel = Cancel()
    cancel.set()
    samples, _ = Dispatcher(backend).call("synthesize", "text", None, 1.0, cancel=cancel)
    assert backend.whole_calls == 1 and backend.made == 0 and samples.size == 40


def pieces_spec(delay: float) -> ModelSpec:
    return ModelSpec(
        name="pieces",
        backend="torch",
        factory=PIECES,
        execution="worker",
        options={"delay_seconds": delay},
        policy={"offloadAfterUse": False},
    )


@pytest.mark.slow
def test_a_worker_stops_a_cancelled_whole_request_and_serves_the_next(
    make_engine: Callable[..., Engine],
) -> None:
    delay = 0.25  # per word: the whole clip of WORDS takes 5 s
    engine = make_engine([pieces_spec(delay)])
    with engine.lease("pieces") as lease:
        whole = lease.synthesize("one two three")  # the plug-in's own synthesize: no cancel asked
        joined = lease.synthesize("one two three", cancel=Cancel())  # run as its stream, joined
    assert joined.samples.tobytes() == whole.samples.tobytes() and joined.sample_rate == whole.sample_rate

    cancel = Cancel()
    outcome: list[BaseException | None] = []

    def speak() -> None:
        try:
            with engine.lease("pieces") as held:
                held.synthesize(WORDS, cancel=cancel)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=speak)
    t.start()
    wait_for(lambda: engine.model_report("pieces").leases == 1, timeout=30, what="the request's lease")
    cancel.set()
    asked = time.perf_counter()
    t.join(30)
    stopped_after = time.perf_counter() - asked
    assert isinstance(outcome[0], RequestCancelled), outcome
    assert stopped_after < 3 * delay, stopped_after  # a piece or two, not the 20 of the whole clip
    report = engine.model_report("pieces")
    assert report.state == "gpu" and report.leases == 0 and report.error is None
    with engine.lease("pieces") as lease:  # the worker is well: the next request is served
        assert lease.synthesize("one two three").samples.tobytes() == whole.samples.tobytes()
