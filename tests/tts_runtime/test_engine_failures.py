"""Failure injection in-process: loader raises or hangs, retry with backoff, GPU budget and OOM rollback."""

from __future__ import annotations

import pytest

from support.fakegpu import FakeGpu
from tts_contract import State, Verb
from tts_runtime.engine import Engine
from tts_runtime.engine.errors import InsufficientGpuMemoryError, ModelLoadError

FAULTS = "support.faults"
MB = 1 << 20


def test_loader_raises_then_retries_with_backoff(make_engine, tiny_spec, events, clock) -> None:
    e = make_engine([tiny_spec(factory=f"{FAULTS}:failing_factory")], clock=clock)
    got = events(e)
    with pytest.raises(ModelLoadError) as err:
        e.acquire("tiny")
    assert err.value.status == 503 and "injected load failure" in str(err.value)
    r = e.model_report("tiny")
    assert r.state == State.FAILED and "injected load failure" in (r.error or "") and r.host_bytes == 0
    assert (got[-1].verb, got[-1].to_state, got[-1].ok) == (Verb.LOAD, State.FAILED, False)
    # The first retry is immediate; after the second failure the next one waits (backoff).
    with pytest.raises(ModelLoadError):
        e.acquire("tiny")
    assert len(got) == 2
    with pytest.raises(ModelLoadError) as err:
        e.acquire("tiny")
    assert len(got) == 2 and err.value.retry_after == pytest.approx(1.0)
    clock.advance(1.0)
    with pytest.raises(ModelLoadError):
        e.acquire("tiny")
    assert len(got) == 3


def test_next_request_recovers_after_a_failed_load(make_engine, tiny_spec, tmp_path) -> None:
    spec = tiny_spec(factory=f"{FAULTS}:flaky_factory", options={"counter_path": str(tmp_path / "n")})
    e = make_engine([spec])
    with pytest.raises(ModelLoadError):
        e.acquire("tiny")
    with e.lease("tiny") as lease:
        assert lease.synthesize("ok").samples.size == 320
    r = e.model_report("tiny")
    assert r.state == State.GPU and r.error is None


def test_loader_hanging_past_its_timeout_fails_cleanly(make_engine, tiny_spec) -> None:
    spec = tiny_spec(
        factory=f"{FAULTS}:hanging_factory", options={"hang_seconds": 1.0}, load_timeout_seconds=0.2
    )
    e = make_engine([spec])
    with pytest.raises(ModelLoadError) as err:
        e.acquire("tiny")
    assert "loadTimeoutSeconds" in str(err.value)
    assert e.model_report("tiny").state == State.FAILED
    assert e.release("tiny").state == State.UNLOADED and e.model_report("tiny").error is None


def test_cuda_oom_during_restore_rolls_back_to_cpu(make_engine, tiny_spec) -> None:
    spec = tiny_spec(factory=f"{FAULTS}:oom_on_restore_factory", policy={"offloadAfterUse": False})
    e = make_engine([spec], device="cuda:0", gpu=FakeGpu(1 << 40))
    with e.lease("tiny") as lease:
        before = lease.synthesize("same").samples
    e.offload("tiny")
    with pytest.raises(InsufficientGpuMemoryError) as err:
        e.acquire("tiny")
    assert err.value.status == 503 and err.value.retry_after > 0
    r = e.model_report("tiny")
    assert r.state == State.CPU and r.host_bytes > 0 and r.gpu_demand_bytes == r.host_bytes
    with e.lease("tiny") as lease:  # the next try fits, with the same weights
        assert lease.synthesize("same").samples.tobytes() == before.tobytes()


def _budget_engine(make_engine, specs, total: int, clock) -> tuple[Engine, FakeGpu]:
    gpu = FakeGpu(total)
    e = make_engine(specs, device="cuda:0", gpu=gpu, clock=clock)

    def used() -> int:
        reports = [e.model_report(n) for n in e.names()]
        return sum(r.host_bytes for r in reports if r.state == State.GPU)

    gpu.used = used
    return e, gpu


def test_budget_offloads_idle_models_lowest_priority_first(make_engine, tiny_spec, clock) -> None:
    keep = {"offloadAfterUse": False}
    specs = [
        tiny_spec("high", options={"size_bytes": MB}, policy={**keep, "priority": 5}),
        tiny_spec("low-old", options={"size_bytes": MB}, policy=keep),
        tiny_spec("low-new", options={"size_bytes": MB}, policy=keep),
        tiny_spec("new", options={"size_bytes": MB}, estimated_bytes=MB, policy=keep),
    ]
    e, _ = _budget_engine(make_engine, specs, int(3.5 * MB), clock)
    for name in ("high", "low-old", "low-new"):
        with e.lease(name) as lease:
            lease.synthesize("x")
        clock.advance(1)
    with e.lease("new") as lease:
        lease.synthesize("x")
    got = {r.name: r.state for r in e.report().models}
    assert got == {"high": State.GPU, "low-old": State.CPU, "low-new": State.GPU, "new": State.GPU}


def test_budget_refuses_when_nothing_can_move(make_engine, tiny_spec, clock) -> None:
    specs = [
        tiny_spec("pinned", options={"size_bytes": MB}, policy={"pinned": True}),
        tiny_spec("new", options={"size_bytes": MB}, estimated_bytes=MB),
    ]
    e, gpu = _budget_engine(make_engine, specs, int(1.5 * MB), clock)
    e.load("pinned")
    with pytest.raises(InsufficientGpuMemoryError) as err:
        e.acquire("new")
    assert err.value.needed_bytes == MB and "retry" in str(err.value)
    r = e.model_report("new")
    assert r.state == State.UNLOADED and r.gpu_demand_bytes == MB  # the operator sees the demand
    assert e.model_report("pinned").state == State.GPU
    clock.advance(61)
    assert e.model_report("new").gpu_demand_bytes == 0  # the demand expires
    gpu.total_bytes = 4 * MB  # a peer pod offloaded
    with e.lease("new") as lease:
        lease.synthesize("x")
