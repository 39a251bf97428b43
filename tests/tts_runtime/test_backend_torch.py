"""The torch backend's memory verbs: what moves, what offload keeps, shared-memory round trip."""

from __future__ import annotations

import torch
from torch import nn

from tts_runtime.engine import ModelSpec
from tts_runtime.engine.backends import Blob
from tts_runtime.engine.torch_backend import TorchBackend, modules_of
from tts_runtime.testing.tiny import TinyPlugin, TinyTTS


def backend(factory: str = "tts_runtime.testing.tiny:factory", **options: object) -> TorchBackend:
    return TorchBackend(ModelSpec(name="m", backend="torch", factory=factory, options=options), "cpu")


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


def test_offload_points_at_the_host_copy_and_restore_makes_a_working_copy() -> None:
    b = backend(size_bytes=1 << 16)
    b.load()
    model = b.obj
    host = {g.key: g.host for g in b.groups}
    assert any(".b." in k for k in host) and any(".p." in k for k in host)  # buffers and parameters
    # Working copy: separate storage from the host copy, equal values.
    for g in b.groups:
        current = g.param if g.param is not None else g.places[0][0]._buffers[g.places[0][1]]
        assert current is not None and current.data_ptr() != g.host.data_ptr()
        assert torch.equal(current, g.host)
    before = b.synthesize("abc", None, 1.0)[0]
    b.offload()
    assert model.resident is False
    assert model.embed.weight.data_ptr() == host["0.p.embed.weight"].data_ptr()  # nothing copied back
    assert model.window.data_ptr() == host["0.b.window"].data_ptr()
    b.restore()
    assert model.embed.weight.data_ptr() != host["0.p.embed.weight"].data_ptr()
    assert b.synthesize("abc", None, 1.0)[0].tobytes() == before.tobytes()
    assert b.stats().host_bytes >= 1 << 16


def test_tied_weights_stay_tied() -> None:
    b = backend("tts_runtime.testing.tiny:factory")
    b.load()
    model = b.obj
    model.out2 = model.out  # the same module twice: one group, both places follow
    b2 = backend()
    b2.obj = model
    b2.groups = []
    keys = [k for k, *_ in b2._collect(model)]
    assert len(keys) == len(set(keys)) == len(list(model.parameters())) + len(list(model.buffers()))


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
