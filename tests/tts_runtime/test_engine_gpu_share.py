"""The pod's GPU share: own idle models go first, then the operator is asked; never a CUDA OOM."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from support.fakegpu import FakeGpu
from tts_contract import State
from tts_runtime.engine import Engine
from tts_runtime.engine.errors import InsufficientGpuMemoryError

MB = 1 << 20
KEEP = {"offloadAfterUse": False}


def _engine(
    make_engine: Callable[..., Engine], specs: list[Any], total: int, share: int | None, clock: Any
) -> tuple[Engine, FakeGpu]:
    """An engine on a pretend GPU whose used memory is what its models hold plus `used_by_others`."""
    gpu = FakeGpu(total)
    e = make_engine(specs, device="cuda:0", gpu=gpu, clock=clock, gpu_memory_budget_bytes=share)

    def used() -> int:
        return sum(r.host_bytes for r in (e.model_report(n) for n in e.names()) if r.state == State.GPU)

    gpu.used = used
    return e, gpu


def _use(e: Engine, name: str) -> None:
    with e.lease(name) as lease:
        lease.synthesize("x")


def _states(e: Engine) -> dict[str, State]:
    return {r.name: r.state for r in e.report().models}


def test_a_load_beyond_the_share_offloads_own_idle_models_first(make_engine, tiny_spec, clock) -> None:
    """A whole free GPU, but a 2.5 MB share: the third 1 MB model fits only once an idle one is offloaded."""
    specs = [
        tiny_spec("a", options={"size_bytes": MB}, policy=KEEP),
        tiny_spec("b", options={"size_bytes": MB}, policy={**KEEP, "priority": 5}),
        tiny_spec("c", options={"size_bytes": MB}, estimated_bytes=MB, policy=KEEP),
    ]
    e, gpu = _engine(make_engine, specs, 1 << 40, int(2.5 * MB), clock)
    _use(e, "a")
    clock.advance(1)
    _use(e, "b")
    assert _states(e) == {"a": State.GPU, "b": State.GPU, "c": State.UNLOADED}
    _use(e, "c")
    # The lowest priority idle model made room; what the process holds stays within its share.
    assert _states(e) == {"a": State.CPU, "b": State.GPU, "c": State.GPU}
    assert gpu.used() <= 2.5 * MB
    # The share was the limit, not the GPU: nothing asks the operator for a peer's memory.
    assert all(r.gpu_demand_bytes == 0 for r in e.report().models)


def test_a_share_that_nothing_can_free_refuses_before_loading(make_engine, tiny_spec, clock) -> None:
    """Pinned models fill the share: the load is refused (503) before any weights move, and no demand is
    published, since a peer pod offloading would not enlarge this pod's share."""
    specs = [
        tiny_spec("pinned", options={"size_bytes": 2 * MB}, policy={"pinned": True}),
        tiny_spec("new", options={"size_bytes": MB}, estimated_bytes=MB),
    ]
    e, gpu = _engine(make_engine, specs, 1 << 40, int(2.5 * MB), clock)
    e.load("pinned")
    with pytest.raises(InsufficientGpuMemoryError) as err:
        e.acquire("new")
    assert err.value.status == 503 and "share" in str(err.value) and err.value.needed_bytes == MB
    new = e.model_report("new")
    assert new.state == State.UNLOADED and new.host_bytes == 0 and new.gpu_demand_bytes == 0
    assert gpu.used() == e.model_report("pinned").host_bytes  # only what was there before


def test_within_the_share_but_the_gpu_is_full_asks_the_operator(make_engine, tiny_spec, clock) -> None:
    """Peers on a time-sliced GPU use more than theirs: own idle models go first; when that is not enough the
    model's demand is reported (the operator then asks an idle peer pod to offload) and the load waits."""
    specs = [
        tiny_spec("idle", options={"size_bytes": MB}, policy=KEEP),
        tiny_spec("busy", options={"size_bytes": MB}, policy={"pinned": True}),
        tiny_spec("new", options={"size_bytes": MB}, estimated_bytes=MB, policy=KEEP),
    ]
    e, gpu = _engine(make_engine, specs, 4 * MB, 3 * MB, clock)
    _use(e, "idle")
    e.load("busy")
    gpu.used_by_others = int(1.5 * MB)  # 0.5 MB free: the share (3 MB) would allow "new", the GPU does not
    _use(e, "new")
    assert _states(e) == {"idle": State.CPU, "busy": State.GPU, "new": State.GPU}

    gpu.used_by_others = int(2.5 * MB)  # 0.5 MB free, and nothing of ours can move: ask the operator
    e.offload("new")
    with pytest.raises(InsufficientGpuMemoryError) as err:
        e.acquire("new")
    assert "bytes free" in str(err.value)
    new = e.model_report("new")  # its demand: the weights it had on the GPU (what a restore needs)
    assert new.state == State.CPU and new.gpu_demand_bytes == new.host_bytes >= MB
    gpu.used_by_others = MB  # a peer offloaded: the retry fits
    _use(e, "new")
    assert _states(e)["new"] == State.GPU and e.model_report("new").gpu_demand_bytes == 0


def test_the_share_comes_from_the_operator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from tts_runtime.settings import Settings

    monkeypatch.setenv("TTS_RUNTIME_GPU_MEMORY_BUDGET_BYTES", str(6 << 30))
    assert Settings().gpu_memory_budget_bytes == 6 << 30
