"""On a real GPU, the torch backend in this process: pinned host copy, ties and dtypes on the device,
`memory_reserved` falling on offload, and a real CUDA OOM during restore rolling back to the host copy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tts_contract import ModelSpec
from tts_runtime.engine.backends import GpuOutOfMemory
from tts_runtime.engine.torch_backend import TorchBackend

pytestmark = pytest.mark.gpu
TINY = "support.tiny:factory"
TIED = "support.tiny:tied_factory"


def make(factory: str, **options: object) -> TorchBackend:
    return TorchBackend(ModelSpec(name="m", backend="torch", factory=factory, options=options), "cuda:0")


def tensors(model: object) -> list[object]:
    import torch

    assert isinstance(model, torch.nn.Module)
    return [*model.parameters(), *model.buffers()]


@pytest.fixture
def closing() -> Iterator[list[TorchBackend]]:
    made: list[TorchBackend] = []
    yield made
    for b in made:
        b.close()


def test_restore_is_pinned_tied_and_keeps_dtypes(closing: list[TorchBackend]) -> None:
    import torch

    b = make(TIED, dtype="bfloat16")
    closing.append(b)
    b.load()
    m = b.obj
    # One arena, registered at its exact size (cudaHostRegister): the restore copy is asynchronous.
    assert b.host.is_pinned() and b.stats().pinned_bytes == b.stats().host_bytes == b.host.numel()
    assert all(t.device.type == "cuda" for t in tensors(m))  # parameters AND (non-persistent) buffers
    assert m.up.dtype == m.window.dtype == torch.bfloat16 and m.steps.dtype == torch.int64
    assert m.head.weight is m.embed.weight and m.down.data_ptr() == m.up.data_ptr()
    before = b.synthesize("on the device", None, 1.0)[0]
    b.offload()
    assert all(t.device.type == "cpu" and (t.numel() == 0 or t.is_pinned()) for t in tensors(m))
    assert m.down.data_ptr() == m.up.data_ptr()
    b.restore()
    assert m.down.data_ptr() == m.up.data_ptr() and m.up.device.type == "cuda"
    assert b.synthesize("on the device", None, 1.0)[0].tobytes() == before.tobytes()


def test_offload_returns_reserved_memory_to_the_driver(closing: list[TorchBackend]) -> None:
    import torch

    size = 256 << 20
    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    b = make(TINY, size_bytes=size)
    closing.append(b)
    b.load()
    b.synthesize("cuBLAS gets a workspace", None, 1.0)
    loaded = b.stats().vram_bytes
    assert loaded - base >= size
    b.offload()
    assert b.stats().vram_bytes - base < 32 << 20  # not kept by the caching allocator
    b.restore()
    assert b.stats().vram_bytes - base >= size


def test_cuda_oom_during_restore_rolls_back_to_the_host_copy(closing: list[TorchBackend]) -> None:
    import torch

    size = 2 << 30
    b = make(TINY, size_bytes=size)
    closing.append(b)
    b.load()
    before = b.synthesize("too big", None, 1.0)[0]
    b.offload()
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(free - (1 << 30), dtype=torch.uint8, device="cuda")  # 1 GiB left: less than the model
    try:
        allocated = torch.cuda.memory_allocated()
        with pytest.raises(GpuOutOfMemory):
            b.restore()  # the small tensors fit, the 2 GiB ballast does not
        assert b.on_device is False
        assert all(t.device.type == "cpu" for t in tensors(b.obj))  # nothing half-moved
        assert torch.cuda.memory_allocated() == allocated  # the partial device copy was freed
    finally:
        del hog
        torch.cuda.empty_cache()
    b.restore()
    assert b.synthesize("too big", None, 1.0)[0].tobytes() == before.tobytes()


def test_restore_is_one_device_arena_and_graphs_are_refused(closing: list[TorchBackend]) -> None:
    import torch

    from tts_runtime.engine.torch_backend import GRAPHS, StaleGraphError

    b = make(TINY, size_bytes=64 << 20)
    closing.append(b)
    b.load()
    assert b.work is not None and b.work.device.type == "cuda"
    lo, hi = b.work.data_ptr(), b.work.data_ptr() + b.work.numel()
    assert all(t.numel() == 0 or lo <= t.data_ptr() < hi for t in tensors(b.obj))
    assert torch.cuda.memory_allocated() >= b.work.numel()
    before = GRAPHS.count
    g = torch.cuda.CUDAGraph()
    x = torch.zeros(4, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s), torch.cuda.graph(g):
        x.add_(1)
    try:
        assert GRAPHS.count == before + 1  # a real capture is seen
        with pytest.raises(StaleGraphError):
            b.offload()
    finally:
        GRAPHS.count = before
        del g
