"""On a real GPU: bytes freed by offload and release (NVML per process and mem_get_info), same outputs.

Run with `pytest -m gpu` (the last -m wins over the `-m 'not k8s'` in our addopts). Memory is compared
as differences of `mem_get_info` taken in this test process (whose own CUDA context is created by the
first measurement, before the baseline), so other tenants of the GPU only matter if they move meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tts_contract import ModelSpec, State
from tts_runtime.engine import Engine, NvmlProbe

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
SIZE = 512 << 20
SLACK = 64 << 20  # what may differ between two measurements without any model in memory
TINY = "support.tiny:factory"


def free_bytes() -> int:
    import torch

    torch.cuda.synchronize()
    return int(torch.cuda.mem_get_info()[0])


def settle(ok: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll `ok()` until true: the driver frees an exited process's memory shortly after it is reaped."""
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, "GPU memory did not come back in time"
        time.sleep(0.1)


def spec(cpu_mode: str, execution: str = "worker") -> ModelSpec:
    return ModelSpec(
        name="tiny",
        backend="torch",
        factory=TINY,
        options={"size_bytes": SIZE},
        cpu_mode=cpu_mode,
        execution=execution,
        policy={"offloadAfterUse": False},
    )


@pytest.mark.parametrize("cpu_mode", ["keep-worker", "exit-worker"])
def test_offload_and_release_give_the_bytes_back(cpu_mode: str) -> None:
    probe = NvmlProbe()
    assert probe.available()
    e = Engine([spec(cpu_mode)], device="cuda:0", gpu=probe)
    try:
        free0 = free_bytes()
        with e.lease("tiny") as lease:
            before = lease.synthesize("gpu words").samples
        loaded = e.model_report("tiny")
        worker = e.pids()[1:]
        free_loaded = free_bytes()
        assert loaded.state == State.GPU and loaded.device.startswith("cuda")
        assert free0 - free_loaded >= SIZE
        assert loaded.vram_bytes >= SIZE  # NVML per process for the worker, or its memory_reserved
        assert e.report().gpu is not None

        off = e.offload("tiny")
        # The weights went back to the driver (empty_cache), not just to torch's caching allocator.
        assert free_bytes() - free_loaded >= SIZE
        if cpu_mode == "exit-worker":
            assert e.pids()[1:] == [] and off.vram_bytes == 0
            settle(lambda: free0 - free_bytes() < SLACK)  # no process, no CUDA context
            settle(lambda: probe.process_bytes(worker) == 0)
        else:
            assert e.pids()[1:] == worker
            assert off.vram_bytes < loaded.vram_bytes - SIZE // 2  # at most the CUDA context stays

        with e.lease("tiny") as lease:
            after = lease.synthesize("gpu words").samples
        assert before.tobytes() == after.tobytes()
        restored = e.pids()[1:]

        e.release("tiny")
        assert e.pids()[1:] == []
        settle(lambda: probe.process_bytes(worker + restored) == 0)
        settle(lambda: free0 - free_bytes() < SLACK)  # zero-VRAM release: the worker's context is gone too
    finally:
        e.shutdown(drain_timeout=5)


def test_inline_torch_offload_frees_allocations() -> None:
    import torch

    e = Engine([spec("keep-worker", execution="inline")], device="cuda:0")
    try:
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        with e.lease("tiny") as lease:
            before = lease.synthesize("inline").samples
        assert torch.cuda.memory_allocated() - base >= SIZE
        e.offload("tiny")
        assert torch.cuda.memory_allocated() - base < SIZE // 8
        with e.lease("tiny") as lease:
            assert lease.synthesize("inline").samples.tobytes() == before.tobytes()
    finally:
        e.shutdown(drain_timeout=5)


def test_a_shared_worker_frees_each_model_on_its_own() -> None:
    """Two models in one worker (`workerGroup`): offloading or releasing one gives its bytes back while the
    other stays on the GPU and speaks as before; the last release ends the process (context included)."""
    probe = NvmlProbe()
    assert probe.available()
    specs = [
        ModelSpec(
            name=name,
            backend="torch",
            factory=TINY,
            options={"size_bytes": SIZE, "seed": seed},
            worker_group="pair",
            policy={"offloadAfterUse": False},
        )
        for name, seed in (("a", 1), ("b", 2))
    ]
    e = Engine(specs, device="cuda:0", gpu=probe)
    try:
        free0 = free_bytes()
        said = {}
        for name in ("a", "b"):
            with e.lease(name) as lease:
                said[name] = lease.synthesize("gpu words").samples
        [worker] = e.pids()[1:]
        free_both = free_bytes()
        assert free0 - free_both >= 2 * SIZE
        assert e.model_report("a").vram_bytes >= SIZE and e.model_report("b").vram_bytes >= SIZE
        assert e.offload("b").vram_bytes == 0
        assert free_bytes() - free_both >= SIZE  # b's weights went back to the driver ...
        with e.lease("a") as lease:  # ... and a is untouched
            assert lease.synthesize("gpu words").samples.tobytes() == said["a"].tobytes()
        with e.lease("b") as lease:
            assert lease.synthesize("gpu words").samples.tobytes() == said["b"].tobytes()
        e.release("a")
        assert e.pids()[1:] == [worker] and e.model_report("b").state == State.GPU
        assert free_bytes() - free_both >= SIZE
        e.release("b")
        assert e.pids()[1:] == []
        settle(lambda: free0 - free_bytes() < SLACK)  # no process, no CUDA context
    finally:
        e.shutdown()
