"""The agent's publisher: what counts as a change, and the trailing-edge rate limit (injected clock)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tts_operator.agent.publish import FREE_BYTES_QUANTUM, Coalescer, changes, significant


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def report(state: str = "cpu", idle: float = 1.0, leases: int = 0, free: int = 10 * 2**30) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": "hibari",
                "variant": "base",
                "state": state,
                "vramBytes": 0 if state != "gpu" else 900,
                "hostBytes": 800,
                "lastUsed": "2026-01-01T00:00:00Z",
                "idleSeconds": idle,
                "leases": leases,
                "error": None,
                "policy": {
                    "offloadAfterUse": True,
                    "idleOffloadSeconds": 600,
                    "idleReleaseSeconds": 3600,
                    "pinned": False,
                    "priority": 0,
                },
            },
        ],
        "gpu": {"uuid": "GPU-1", "index": 0, "totalBytes": 80 * 2**30, "freeBytes": free, "processBytes": 0},
    }


def test_idle_seconds_ticking_is_not_a_change() -> None:
    assert significant(report(idle=1.0)) == significant(report(idle=250.0))
    assert changes(report(idle=1.0), report(idle=250.0)) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("state", "gpu"),
        ("leases", 2),
        ("vramBytes", 5),
        ("hostBytes", 0),
        ("error", "boom"),
        ("lastUsed", "2026-01-01T00:01:00Z"),
        ("gpuDemandBytes", 123),
    ],
)
def test_model_fields_that_matter_are_changes(field: str, value: Any) -> None:
    before = report()
    after = copy.deepcopy(before)
    after["models"][0][field] = value
    assert significant(before) != significant(after)
    assert [line.split(":")[0] for line in changes(before, after)] == [f"hibari.{field}"]


def test_policy_gpu_and_model_set_changes_are_reported() -> None:
    before = report()
    after = copy.deepcopy(before)
    after["models"][0]["policy"]["pinned"] = True
    assert changes(before, after) == ["hibari.policy.pinned: false -> true"]
    moved = copy.deepcopy(before)
    moved["gpu"]["processBytes"] = 2**30
    assert changes(before, moved) == [f"gpu.processBytes: 0 -> {2**30}"]
    grown = copy.deepcopy(before)
    grown["models"].append({**before["models"][0], "name": "kokoro", "state": "unloaded"})
    assert changes(before, grown) == ["kokoro: new (unloaded)"]
    assert changes(grown, before) == ["kokoro: gone"]
    assert changes(None, before) == ["first report"]


def test_free_gpu_memory_matters_only_in_large_steps() -> None:
    base = 10 * 2**30
    assert changes(report(free=base), report(free=base + 1024)) == []
    assert changes(report(free=base), report(free=base + 4 * FREE_BYTES_QUANTUM)) != []


def test_model_order_does_not_matter() -> None:
    a = report()
    a["models"].append({"name": "aaa", "state": "cpu"})
    b = copy.deepcopy(a)
    b["models"].reverse()
    assert changes(a, b) == []


def test_hundred_flips_in_a_second_make_at_most_two_patches_and_the_last_is_final() -> None:
    clock = FakeClock()
    coalescer = Coalescer(1.0, clock)
    patches: list[dict[str, Any]] = []

    def drain() -> None:
        value = coalescer.due()
        if value is not None:
            patches.append(dict(value))
            coalescer.published(value)

    states = ["gpu", "cpu"]
    for i in range(100):
        coalescer.offer(report(state=states[i % 2], leases=i % 3))
        drain()
        clock.now += 0.0099  # 100 flips within 0.99 s
    final = report(state="gpu", leases=7)
    coalescer.offer(final)
    drain()
    # The trailing edge: once the interval has passed, the latest state goes out.
    wait = coalescer.wait_time()
    assert wait is not None and 0 < wait <= 1.0
    clock.now += wait
    drain()
    assert len(patches) == 2
    assert patches[-1] == final
    assert coalescer.pending is None and coalescer.wait_time() is None


def test_leading_edge_publishes_at_once_after_a_quiet_period() -> None:
    clock = FakeClock()
    coalescer = Coalescer(1.0, clock)
    coalescer.offer(report("cpu"))
    first = coalescer.due()
    assert first is not None
    coalescer.published(first)
    clock.now += 5
    coalescer.offer(report("gpu"))
    assert coalescer.wait_time() == 0
    assert coalescer.due() == report("gpu")


def test_a_burst_that_ends_where_it_started_publishes_nothing_more() -> None:
    clock = FakeClock()
    coalescer = Coalescer(1.0, clock)
    coalescer.offer(report("cpu"))
    value = coalescer.due()
    assert value is not None
    coalescer.published(value)
    coalescer.offer(report("gpu"))
    coalescer.offer(report("cpu", idle=9.0))  # back to what the pod shows; idle time does not count
    clock.now += 2
    assert coalescer.due() is None and coalescer.wait_time() is None


def test_a_failed_publication_stays_pending_and_waits_for_the_retry() -> None:
    clock = FakeClock()
    coalescer = Coalescer(1.0, clock)
    coalescer.offer(report("gpu"))
    assert coalescer.due() is not None
    coalescer.failed(retry_in=3.0)
    clock.now += 2.9
    assert coalescer.due() is None
    clock.now += 0.2
    assert coalescer.due() == report("gpu")


def test_forget_republishes_the_same_state() -> None:
    clock = FakeClock()
    coalescer = Coalescer(0.0, clock)
    coalescer.offer(report("gpu"))
    value = coalescer.due()
    assert value is not None
    coalescer.published(value)
    coalescer.offer(report("gpu"))
    assert coalescer.due() is None
    coalescer.forget()
    coalescer.offer(report("gpu"))
    assert coalescer.due() == report("gpu")


def test_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="min_interval"):
        Coalescer(-1.0)
