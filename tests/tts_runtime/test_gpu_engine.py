"""On a real GPU: bytes freed by offload and release (NVML per process and mem_get_info), same outputs."""

from __future__ import annotations

import pytest

from tts_runtime.engine import Engine, ModelSpec, NvmlProbe
from tts_runtime.residency import State

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
SIZE = 512 << 20
TINY = "tts_runtime.testing.tiny:factory"


def free_bytes() -> int:
    import torch

    torch.cuda.synchronize()
    return int(torch.cuda.mem_get_info()[0])


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
        assert loaded.state == State.GPU and loaded.device.startswith("cuda")
        assert free0 - free_bytes() >= SIZE
        assert loaded.vram_bytes >= SIZE  # NVML per process for the worker
        assert e.report().gpu is not None

        off = e.offload("tiny")
        assert free0 - free_bytes() < (600 << 20)  # at most a CUDA context stays
        if cpu_mode == "exit-worker":
            assert e.pids()[1:] == [] and probe.process_bytes(worker) == 0 and off.vram_bytes == 0
        else:
            assert off.vram_bytes < loaded.vram_bytes - SIZE // 2

        with e.lease("tiny") as lease:
            after = lease.synthesize("gpu words").samples
        assert before.tobytes() == after.tobytes()

        e.release("tiny")
        assert e.pids()[1:] == []
        assert probe.process_bytes(worker + e.pids()[1:]) == 0
        assert free0 - free_bytes() < (64 << 20)  # zero-VRAM release: the worker's context is gone too
    finally:
        e.shutdown(drain_timeout=5)


def test_inline_torch_offload_frees_allocations() -> None:
    import torch

    e = Engine([spec("keep-worker", execution="inline")], device="cuda:0")
    try:
        with e.lease("tiny") as lease:
            before = lease.synthesize("inline").samples
        assert torch.cuda.memory_allocated() >= SIZE
        e.offload("tiny")
        assert torch.cuda.memory_allocated() < SIZE // 8
        with e.lease("tiny") as lease:
            assert lease.synthesize("inline").samples.tobytes() == before.tobytes()
    finally:
        e.shutdown(drain_timeout=5)
