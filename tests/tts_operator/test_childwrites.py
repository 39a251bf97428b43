"""The operator's memo of the children it wrote, and the per-service turns: the pieces that keep a lagging
index and concurrent handlers from POSTing a child twice (together on the real API server:
test_operator_turns.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tts_operator.childwrites import ChildWrites
from tts_operator.serial import Serial


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def child(version: str, uid: str = "u1", name: str = "voice", replicas: int = 1) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": version},
        "spec": {"replicas": replicas},
    }


def test_a_child_the_index_does_not_show_yet_is_what_the_operator_wrote() -> None:
    writes = ChildWrites()
    writes.wrote(child("9"))
    assert writes.current("Deployment", "ns", "voice", None) == child("9")
    assert writes.current("Service", "ns", "voice", None) is None  # another kind: nothing known


def test_an_older_view_is_superseded_and_an_equal_or_newer_one_is_the_truth() -> None:
    writes = ChildWrites()
    writes.wrote(child("9", replicas=2))  # patched to 2 replicas, answered at version 9
    assert writes.current("Deployment", "ns", "voice", child("7"))["spec"]["replicas"] == 2  # type: ignore[index]
    assert writes.current("Deployment", "ns", "voice", child("9")) == child("9")
    assert len(writes) == 0  # the watch caught up: the entry is gone
    # Someone edited it since: the newer view is the truth, not what the operator wrote before.
    writes.wrote(child("12", replicas=2))
    assert writes.current("Deployment", "ns", "voice", child("15", replicas=5)) == child("15", replicas=5)


def test_a_deletion_forgets_only_the_object_that_was_deleted() -> None:
    writes = ChildWrites()
    writes.wrote(child("9", uid="new"))
    writes.forget("Deployment", "ns", "voice", uid="old")  # a predecessor's DELETED event, arriving late
    assert writes.current("Deployment", "ns", "voice", None) == child("9", uid="new")
    writes.forget("Deployment", "ns", "voice", uid="new")
    assert writes.current("Deployment", "ns", "voice", None) is None


def test_entries_end_after_their_time_to_live_and_beyond_the_bound() -> None:
    clock = Clock()
    writes = ChildWrites(ttl=60, max_children=2, clock=clock)
    writes.wrote(child("9"))
    clock.now += 61
    assert writes.current("Deployment", "ns", "voice", None) is None  # the API server will say (409)
    writes.wrote(child("1", name="a"))
    writes.wrote(child("2", name="b"))
    writes.wrote(child("3", name="c"))
    assert len(writes) == 2 and writes.current("Deployment", "ns", "a", None) is None


async def test_turns_of_one_key_run_one_at_a_time_in_order_and_other_keys_run_alongside() -> None:
    serial: Serial[str] = Serial()
    order: list[str] = []
    first_in = asyncio.Event()
    let_go = asyncio.Event()

    async def first() -> None:
        async with serial.turn("a"):
            order.append("first in")
            first_in.set()
            await let_go.wait()
            order.append("first out")

    async def second() -> None:
        async with serial.turn("a"):
            order.append("second in")

    one = asyncio.create_task(first())
    await first_in.wait()
    two = asyncio.create_task(second())
    await asyncio.sleep(0)  # `second` runs up to its turn
    assert serial.waiting("a") == 1
    async with serial.turn("b"):  # another service: not held up
        order.append("other key")
    let_go.set()
    await asyncio.gather(one, two)
    assert order == ["first in", "other key", "first out", "second in"]
    assert len(serial) == 0 and serial.waiting("a") == 0  # idle keys keep nothing


async def test_a_turn_given_up_while_waiting_leaves_nothing_behind() -> None:
    serial: Serial[str] = Serial()
    async with serial.turn("a"):
        waiter = asyncio.create_task(serial.turn("a").__aenter__())
        await asyncio.sleep(0)
        assert serial.waiting("a") == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert serial.waiting("a") == 0
    assert len(serial) == 0
