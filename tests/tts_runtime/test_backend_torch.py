"""The torch backend's memory verbs: what moves, what offload keeps, ties, dtypes, rollback, shared memory."""

from __future__ import annotations

import weakref
from typing import Any

import pytest
import torch
from torch import nn

from support.tiny import TinyPlugin, TinyTTS
from tts_contract import ModelSpec
from tts_runtime.engine.backends import Blob, GpuOutOfMemory
from tts_runtime.engine.torch_backend import TorchBackend, modules_of

TIED = "support.tiny:tied_factory"
FAULTS = "support.faults"


TINY = "support.tiny:factory"


def backend(factory: str = "support.tiny:factory", **options: object) -> TorchBackend:
    # A separate CPU working copy stands in for the device copy, so the moving code runs without a GPU.
    spec = ModelSpec(name="m", backend="torch", factory=factory, options=options)
    return TorchBackend(spec, "cpu", working_copy=True)


def in_block(t: torch.Tensor, block: torch.Tensor) -> bool:
    """Does tensor `t` live inside the memory of `block` (an empty tensor has no address: its device)?"""
    if t.numel() == 0:
        return t.device == block.device
    start = block.untyped_storage().data_ptr()
    return start <= t.data_ptr() < start + max(1, block.untyped_storage().nbytes())


def current_tensors(b: TorchBackend) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(what the model uses now, the host block it belongs to) for every parameter and buffer."""
    out = []
    for g in b.groups:
        for m in g.members:
            for owner, leaf in m.places:
                t = owner._parameters.get(leaf) if m.param is not None else owner._buffers.get(leaf)
                assert t is not None
                out.append((t, g.host))
    return out


def test_module_rule() -> None:
    tiny = TinyTTS()
    assert modules_of(tiny) == [tiny]
    plugin = TinyPlugin()
    assert modules_of(plugin) == [plugin.a, plugin.b]

    class Attrs:
        def __init__(self) -> None:
            self.enc, self.dec, self.name = nn.Linear(2, 2), nn.Linear(2, 2), "x"

    obj = Attrs()
    assert modules_of(obj) == [obj.enc, obj.dec]


def test_on_a_cpu_the_host_copy_is_the_working_copy() -> None:
    spec = ModelSpec(name="m", backend="torch", factory=TINY, options={"size_bytes": 1 << 16})
    b = TorchBackend(spec, "cpu")
    b.load()
    before = b.synthesize("abc", None, 1.0)[0]
    assert all(in_block(t, host) for t, host in current_tensors(b))  # one copy of the weights
    b.offload()
    b.restore()
    assert all(in_block(t, host) for t, host in current_tensors(b))
    assert b.obj.resident is True and b.on_device is True
    assert b.synthesize("abc", None, 1.0)[0].tobytes() == before.tobytes()
    assert b.stats().host_bytes >= 1 << 16


def test_offload_points_at_the_host_copy_and_restore_makes_a_working_copy() -> None:
    b = backend(size_bytes=1 << 16)
    b.load()
    model = b.obj
    keys = {m.key for g in b.groups for m in g.members}
    assert {"0.p.embed.weight", "0.p.ballast", "0.b.window"} <= keys  # parameters and buffers
    # Working copy: separate memory from the host copy, equal values.
    for t, host in current_tensors(b):
        assert not in_block(t, host)
    before = b.synthesize("abc", None, 1.0)[0]
    b.offload()
    assert model.resident is False
    assert all(in_block(t, host) for t, host in current_tensors(b))  # nothing copied back
    b.restore()
    assert not any(in_block(t, host) for t, host in current_tensors(b))
    assert b.synthesize("abc", None, 1.0)[0].tobytes() == before.tobytes()
    assert b.stats().host_bytes >= 1 << 16


def assert_tied(model: Any) -> None:
    # One Parameter in two modules (tie_weights) and two Parameters over one storage (a transposed view).
    assert model.head.weight is model.embed.weight
    assert model.down.data_ptr() == model.up.data_ptr()
    assert model.down.stride() == (1, model.up.shape[1])
    assert torch.equal(model.down, model.up.t())
    # Really one memory: a write through one name shows through the other.
    with torch.no_grad():
        old = model.up[0, 0].item()
        model.up[0, 0] = 0.25
        assert model.down[0, 0].item() == 0.25
        model.up[0, 0] = old


def test_tied_weights_stay_tied_through_offload_and_restore() -> None:
    b = backend(TIED)
    b.load()
    model = b.obj
    assert_tied(model)
    before = b.synthesize("tied", None, 1.0)[0]
    # Each storage is copied once: embed/head one block, up/down one block.
    sizes = {m.key: g.host.numel() for g in b.groups for m in g.members}
    assert sizes["0.p.up"] == sizes["0.p.down"] == 16 * 160 * 4
    # embed/head + up/down + window + steps: no tie copied twice; one arena, each block 64-byte aligned
    exact = 256 * 16 * 4 + 16 * 160 * 4 + 160 * 4 + 4 * 8
    assert len(b.groups) == 4 and exact <= b.stats().host_bytes < exact + 4 * 64
    assert b.stats().host_bytes == b.host.numel()
    for _ in range(2):
        b.offload()
        assert_tied(model)
        b.restore()
        assert_tied(model)
    assert b.synthesize("tied", None, 1.0)[0].tobytes() == before.tobytes()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtypes_and_non_persistent_buffers_survive(dtype: str) -> None:
    b = backend(TIED, dtype=dtype)
    b.load()
    model = b.obj
    want = getattr(torch, dtype)
    before = b.synthesize("half", None, 1.0)[0]
    window = model.window.clone()
    assert "window" not in model.state_dict()  # non-persistent: still moved (it is in the host copy)
    b.offload()
    b.restore()
    assert model.embed.weight.dtype == model.up.dtype == model.window.dtype == want
    assert model.steps.dtype == torch.int64 and model.steps.tolist() == [0, 1, 2, 3]
    assert torch.equal(model.window, window)
    assert b.synthesize("half", None, 1.0)[0].tobytes() == before.tobytes()


class Slice(nn.Module):
    """A parameter that views 10 elements of a 4 MiB storage."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.arange(1 << 20, dtype=torch.float32)[1000:1010], requires_grad=False)

    def synthesize(self, text: str, voice: str, speed: float) -> tuple[torch.Tensor, int]:
        return self.w, 16000


def test_a_parameter_viewing_a_big_storage_copies_only_what_it_covers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tts_runtime.engine.torch_backend.resolve_factory", lambda ref: Slice)
    b = backend()
    b.load()
    assert b.stats().host_bytes <= 64 + 10 * 4  # the span it covers, not the whole 4 MiB storage
    want = [float(x) for x in range(1000, 1010)]
    assert b.obj.w.tolist() == want
    b.offload()
    assert b.obj.w.tolist() == want


def test_failed_restore_leaves_nothing_half_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    from tts_runtime.engine.torch_backend import _Group

    b = backend(size_bytes=1 << 14)
    b.load()
    before = b.synthesize("roll back", None, 1.0)[0]
    b.offload()
    assert len(b.groups) > 3
    made: list[weakref.ref[torch.Tensor]] = []
    real_clone, real_point = torch.Tensor.clone, _Group.point_at
    pointed: list[int] = []

    def clone(self: torch.Tensor, *a: Any, **kw: Any) -> torch.Tensor:
        t = real_clone(self, *a, **kw)
        made.append(weakref.ref(t))
        return t

    def point_then_oom(self: _Group, arena: torch.Tensor) -> None:
        if arena is not b.host:
            if len(pointed) == 2:  # mid-way: some groups already view the working copy
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
            pointed.append(1)
        real_point(self, arena)

    monkeypatch.setattr(torch.Tensor, "clone", clone)
    monkeypatch.setattr(_Group, "point_at", point_then_oom)
    with pytest.raises(GpuOutOfMemory) as failed:
        b.restore()
    monkeypatch.undo()
    assert b.on_device is False and b.work is None
    assert all(in_block(t, host) for t, host in current_tensors(b))  # every tensor back on the host
    # The working copy is gone while the error (and its traceback) is still held.
    assert failed.value is not None and len(made) == 1 and made[0]() is None
    b.restore()
    assert b.synthesize("roll back", None, 1.0)[0].tobytes() == before.tobytes()


@pytest.mark.parametrize("error", [None, "broken hook"])
def test_failing_restore_hook_rolls_back_too(error: str | None) -> None:
    options: dict[str, object] = {"error": error} if error else {}
    b = backend(f"{FAULTS}:oom_on_restore_factory", **options)
    b.load()
    b.offload()
    with pytest.raises(GpuOutOfMemory if error is None else RuntimeError, match=error or "out of memory"):
        b.restore()
    assert b.on_device is False and b.obj.resident is False
    assert all(in_block(t, host) for t, host in current_tensors(b))
    b.restore()  # the fault fires once
    assert b.on_device is True and b.obj.resident is True


def test_host_copy_round_trips_through_raw_bytes() -> None:
    a = backend(size_bytes=1 << 15, seed=3)
    a.load()
    blobs = [Blob(x.key, x.meta, memoryview(bytearray(x.data))) for x in a.host_blobs()]
    b = backend(size_bytes=1 << 15, seed=99)  # different seed: only the blobs can make them equal
    b.adopt_host(blobs)
    b.restore()
    assert (
        b.synthesize("round trip", None, 1.0)[0].tobytes()
        == a.synthesize("round trip", None, 1.0)[0].tobytes()
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ties_and_dtypes_survive_the_shared_memory_round_trip(dtype: str) -> None:
    a = backend(TIED, dtype=dtype)
    a.load()
    blobs = [Blob(x.key, x.meta, memoryview(bytearray(x.data))) for x in a.host_blobs()]
    b = backend(TIED, dtype=dtype, seed=5)
    b.adopt_host(blobs)
    assert_tied(b.obj)
    b.restore()
    assert_tied(b.obj)
    assert b.obj.up.dtype == getattr(torch, dtype)
    assert b.synthesize("shm", None, 1.0)[0].tobytes() == a.synthesize("shm", None, 1.0)[0].tobytes()


def test_a_member_view_inside_a_block_that_starts_mid_storage() -> None:
    from tts_runtime.engine.torch_backend import _Member

    arena = torch.arange(256, dtype=torch.uint8)
    block = arena[64:128]  # a host block carved from a larger allocation
    view = _Member("k", torch.float32, (2,), (1,), 1).view(block)
    assert view.data_ptr() - arena.data_ptr() == 64 + 4
    assert view.untyped_storage().data_ptr() == arena.untyped_storage().data_ptr()
