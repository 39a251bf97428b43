"""Restore as one copy: one host arena laid out once, one device (here: CPU stand-in) arena, tensors as
views into it; exact-size pinning through the `HostPinner` seam; CUDA graphs that a move would make stale."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from tts_contract import ModelSpec
from tts_runtime.engine.backends import Blob
from tts_runtime.engine.torch_backend import GRAPHS, StaleGraphError, TorchBackend

TIED = "support.tiny:tied_factory"


class FakePinner:
    """Records what would be page-locked; `ok=False` plays a driver that refuses (e.g. memlock limits)."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.registered: dict[int, int] = {}
        self.calls: list[tuple[str, int, int]] = []

    def register(self, ptr: int, nbytes: int) -> bool:
        self.calls.append(("register", ptr, nbytes))
        if self.ok:
            self.registered[ptr] = nbytes
        return self.ok

    def unregister(self, ptr: int) -> None:
        self.calls.append(("unregister", ptr, self.registered.pop(ptr)))


def backend(factory: str = "support.tiny:factory", pinner: Any = None, **options: Any) -> TorchBackend:
    spec = ModelSpec(name="m", backend="torch", factory=factory, options=options)
    # A separate CPU working copy stands in for the device arena (on a CPU the host copy executes).
    return TorchBackend(spec, "cpu", pinner=pinner, working_copy=True)


def tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def inside(t: torch.Tensor, arena: torch.Tensor) -> bool:
    lo = arena.data_ptr()
    return t.numel() == 0 or (lo <= t.data_ptr() and t.data_ptr() + t.nbytes <= lo + arena.numel())


def test_restore_is_one_copy_into_one_arena_of_views(monkeypatch: pytest.MonkeyPatch) -> None:
    b = backend(TIED)
    b.load()
    model = b.obj
    params = {name: id(p) for name, p in model.named_parameters()}
    before = b.synthesize("arena", None, 1.0)[0]
    offsets = [g.offset for g in b.groups]
    assert all(o % 64 == 0 for o in offsets) and offsets == sorted(offsets)
    ends = [g.offset + g.host.numel() for g in b.groups]
    assert all(e <= o for e, o in zip(ends, offsets[1:], strict=False))  # blocks never overlap
    b.offload()
    assert b.work is None and all(inside(t, b.host) for t in tensors(model))
    copies: list[torch.Tensor] = []
    real_clone = torch.Tensor.clone

    def clone(self: torch.Tensor, *a: Any, **kw: Any) -> torch.Tensor:
        copies.append(self)
        return real_clone(self, *a, **kw)

    monkeypatch.setattr(torch.Tensor, "clone", clone)
    b.restore()
    monkeypatch.undo()
    assert len(copies) == 1 and copies[0] is b.host  # the whole model in one copy
    assert b.work is not None and b.work.numel() == b.host.numel()
    assert all(inside(t, b.work) for t in tensors(model))  # every tensor a view of the one arena
    assert {name: id(p) for name, p in model.named_parameters()} == params  # same Parameter objects
    assert model.head.weight is model.embed.weight and model.down.data_ptr() == model.up.data_ptr()
    assert b.synthesize("arena", None, 1.0)[0].tobytes() == before.tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_many_tensors_of_mixed_dtypes_come_back_bit_identical(dtype: str) -> None:
    class Many(nn.Module):
        sample_rate = 16000

        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(1)
            dt = getattr(torch, dtype)
            # Odd sizes: every block starts on its own alignment, whatever the previous one's length.
            self.ws = nn.ParameterList(
                nn.Parameter(torch.randn(3 + i % 7, generator=g).to(dt), requires_grad=False)
                for i in range(2000)
            )
            self.steps: torch.Tensor
            self.register_buffer("steps", torch.arange(5, dtype=torch.int64))

        def synthesize(self, text: str, voice: str, speed: float) -> tuple[torch.Tensor, int]:
            flat = torch.cat([w.float() for w in self.ws])
            return flat * self.steps.sum(), 16000

    b = backend()
    b.spec = b.spec.model_copy(update={"factory": "x:y"})
    b.obj = None
    monkey = pytest.MonkeyPatch()
    monkey.setattr("tts_runtime.engine.torch_backend.resolve_factory", lambda ref: Many)
    try:
        b.load()
    finally:
        monkey.undo()
    before = b.synthesize("x", None, 1.0)[0]
    assert len(b.groups) == 2001
    for _ in range(2):
        b.offload()
        b.restore()
        assert all(inside(t, b.work) for t in tensors(b.obj))
    assert b.obj.ws[5].dtype == getattr(torch, dtype) and b.obj.steps.dtype == torch.int64
    assert b.synthesize("x", None, 1.0)[0].tobytes() == before.tobytes()


def test_the_arena_is_pinned_once_at_its_exact_size_and_unpinned_on_close() -> None:
    pinner = FakePinner()
    b = backend(pinner=pinner, size_bytes=(9 << 20) + 12)  # not a power of two: nothing rounds it up
    b.load()
    st = b.stats()
    assert pinner.calls == [("register", b.host.data_ptr(), b.host.numel())]
    assert st.pinned_bytes == st.host_bytes == b.host.numel() < 16 << 20
    for _ in range(2):
        b.offload()
        b.restore()
    assert len(pinner.calls) == 1  # offload and restore never re-pin
    ptr = b.host.data_ptr()
    b.close()
    assert pinner.calls[-1] == ("unregister", ptr, st.host_bytes) and not pinner.registered


def test_a_refused_registration_leaves_a_working_pageable_copy() -> None:
    b = backend(pinner=FakePinner(ok=False), size_bytes=1 << 16)
    b.load()
    before = b.synthesize("pageable", None, 1.0)[0]
    assert b.stats().pinned_bytes == 0 and b.stats().host_bytes >= 1 << 16
    b.offload()
    b.restore()
    assert b.synthesize("pageable", None, 1.0)[0].tobytes() == before.tobytes()
    b.close()  # nothing to unregister


def test_exit_worker_registers_the_shared_block_before_the_copy_and_unregisters_on_close() -> None:
    a = backend(TIED)
    a.load()
    [blob] = a.host_blobs()
    shared = bytearray(blob.data)  # stands in for the shared-memory block a new worker maps
    pinner = FakePinner()
    b = backend(TIED, pinner=pinner, seed=9)
    b.adopt_host([Blob(blob.key, blob.meta, memoryview(shared))])
    addr = torch.frombuffer(shared, dtype=torch.uint8).data_ptr()
    assert pinner.calls == [("register", addr, len(shared))]  # the block itself: no copy into new memory
    assert b.host.data_ptr() == addr and b.stats().pinned_bytes == len(shared)
    b.restore()
    assert b.synthesize("shm", None, 1.0)[0].tobytes() == a.synthesize("shm", None, 1.0)[0].tobytes()
    b.close()
    assert pinner.calls[-1][:2] == ("unregister", addr) and not pinner.registered


class FakeGraph:
    """Stands in for torch.cuda.CUDAGraph (which needs CUDA): it captures, and it replays."""

    def capture_begin(self) -> None:
        pass

    def replay(self) -> None:
        pass


@pytest.fixture
def graphs() -> Iterator[None]:
    GRAPHS.watch(FakeGraph)
    GRAPHS.count = 0
    yield
    GRAPHS.count = 0


class Graphed(nn.Module):
    """Captures a graph on its first request, as CUDA-graphed models do; may know how to re-capture."""

    sample_rate = 16000

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(4), requires_grad=False)
        self.graph: FakeGraph | None = None
        self.recaptures = 0

    def synthesize(self, text: str, voice: str, speed: float) -> tuple[torch.Tensor, int]:
        if self.graph is None:
            self.graph = FakeGraph()
            self.graph.capture_begin()
        return self.w.clone(), 16000


class Recapturing(Graphed):
    def residency_recapture(self) -> None:
        self.recaptures += 1
        self.graph = FakeGraph()
        self.graph.capture_begin()


def graphed(monkeypatch: pytest.MonkeyPatch, cls: type) -> TorchBackend:
    monkeypatch.setattr("tts_runtime.engine.torch_backend.resolve_factory", lambda ref: cls)
    b = backend()
    b.load()
    b.synthesize("capture", None, 1.0)
    return b


def test_offload_refuses_a_model_whose_cuda_graphs_would_go_stale(graphs: None, monkeypatch) -> None:
    b = graphed(monkeypatch, Graphed)
    with pytest.raises(StaleGraphError, match="residency_recapture"):
        b.offload()
    assert b.on_device and inside(b.obj.w, b.work)  # refused before anything moved


def test_a_model_that_recaptures_is_asked_to_when_its_arena_moved(graphs: None, monkeypatch) -> None:
    b = graphed(monkeypatch, Recapturing)
    b.offload()
    b.restore()  # a CPU clone lands at a new address, as a device arena may
    assert b.obj.recaptures == 1
    assert b.synthesize("again", None, 1.0)[0].tolist() == [1.0] * 4
