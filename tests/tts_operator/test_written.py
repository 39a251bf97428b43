"""The operator's memo of its own pod writes: a lagging index must not make it write the same value again."""

from __future__ import annotations

from tts_contract import annotations as ann
from tts_operator.written import ObservedPod, Written

SHARE, REQUEST = ann.GPU_SHARE, ann.OFFLOAD_REQUEST


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pod(version: str, share: str | None = None, request: str | None = None, name: str = "a") -> ObservedPod:
    return ObservedPod(
        namespace="ns",
        name=name,
        service="voice",
        gpu_share=share,
        offload_request=request,
        resource_version=version,
    )


def test_values_the_pod_shows_are_not_written() -> None:
    written = Written()
    assert written.unwritten(pod("5", share="S1"), {SHARE: "S1", REQUEST: "R1"}) == {REQUEST: "R1"}
    assert written.unwritten(pod("5"), {SHARE: None}) == {}
    assert written.unwritten(pod("5"), {"other/key": "x"}) == {"other/key": "x"}  # not ours to judge


def test_a_lagging_observation_does_not_write_again_and_a_newer_one_is_the_truth() -> None:
    written = Written()
    written.wrote(pod("5", share="S0"), {SHARE: "S1", REQUEST: "R1"}, version="9")
    lagging = pod("7", share="S0")
    assert written.unwritten(lagging, {SHARE: "S1", REQUEST: "R1"}) == {}
    assert written.effective(lagging).gpu_share == "S1"
    assert written.unwritten(lagging, {SHARE: "S2"}) == {SHARE: "S2"}
    # The watch caught up, and shows what happened since: the agent removed (acknowledged) the request.
    newer = pod("12", share="S1", request=None)
    assert written.effective(newer) == newer
    assert written.unwritten(newer, {REQUEST: "R1"}) == {REQUEST: "R1"}
    # A pass planned from the lagging observation still sees its write as done.
    assert written.unwritten(lagging, {SHARE: "S1"}) == {}


def test_a_write_in_flight_counts_and_a_late_answer_does_not_undo_a_later_write() -> None:
    written = Written()
    seen = pod("5", share="S0")
    written.wrote(seen, {SHARE: "S1"})  # sent, not answered yet
    assert written.unwritten(seen, {SHARE: "S1"}) == {}
    written.wrote(seen, {SHARE: "S2"})  # a later pass, with newer data, sends another value
    written.wrote(seen, {SHARE: "S1"}, version="8")  # the first answer arrives late
    written.wrote(seen, {SHARE: "S2"}, version="9")
    assert written.effective(pod("8", share="S1")).gpu_share == "S2"
    assert written.effective(pod("9", share="S2")).gpu_share == "S2"


def test_a_failed_write_is_not_remembered() -> None:
    written = Written()
    seen = pod("5", share="S0")
    written.wrote(seen, {SHARE: "S1"})
    written.unsent(seen, {SHARE: "S1"})
    assert written.unwritten(seen, {SHARE: "S1"}) == {SHARE: "S1"}


def test_entries_are_bounded_in_time_and_number_and_go_with_the_pod() -> None:
    clock = Clock()
    written = Written(ttl=10.0, max_pods=2, clock=clock)
    written.wrote(pod("5", name="a"), {SHARE: "A"}, version="6")
    written.wrote(pod("5", name="b"), {SHARE: "B"}, version="7")
    written.wrote(pod("5", name="c"), {SHARE: "C"}, version="8")
    assert len(written) == 2
    assert written.effective(pod("5", name="a")).gpu_share is None  # the oldest pod was dropped
    assert written.effective(pod("5", name="b")).gpu_share == "B"
    written.forget("ns/b")
    assert written.effective(pod("5", name="b")).gpu_share is None
    clock.now += 11  # a version the watch never showed (a missed event) stops counting
    assert written.effective(pod("5", name="c")).gpu_share is None
    assert len(written) == 0


def test_versions_that_are_not_numbers_count_until_the_ttl() -> None:
    clock = Clock()
    written = Written(ttl=10.0, clock=clock)
    written.wrote(pod("x1"), {SHARE: "S1"}, version="x2")
    assert written.effective(pod("x9", share="S0")).gpu_share == "S1"
    clock.now += 11
    assert written.effective(pod("x9", share="S0")).gpu_share == "S0"
