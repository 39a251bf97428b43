"""The hibari backend in-process: bytes kept in RAM, session dropped on offload, same audio after restore."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tts_contract import ModelSpec
from tts_runtime.engine.backends import Blob
from tts_runtime.engine.errors import InvalidRequestError
from tts_runtime.engine.hibari_backend import CPU_ONLY, HibariBackend, available_voices, rss_bytes

TEXT = "Good morning, Zorblatt."  # an unknown word: the OOV net runs too


@pytest.fixture(scope="module")
def loaded() -> Iterator[HibariBackend]:
    b = HibariBackend(ModelSpec(name="hibari"), "cpu")
    b.load()
    yield b
    b.close()


def test_offload_drops_the_session_and_restore_rebuilds_it(loaded: HibariBackend) -> None:
    b = loaded
    model = len(b.model_bytes["heart"])
    assert "heart" in b.engines and model > 7_000_000 and b.stats().sample_rate == 24000
    first, sr = b.synthesize(TEXT, "heart", 1.0)
    assert sr == 24000 and first.dtype.name == "float32" and first.size > 0
    session, g2p = b.engines["heart"].sess, b.g2p[False]
    b.offload()
    assert b.engines == {} and b.stats().host_bytes > model  # bytes stay in RAM
    b.restore()
    assert b.engines["heart"].sess is not session  # a new session...
    assert b.engines["heart"]._g2p is g2p and g2p._oov is not None  # ...the same G2P and OOV net
    again, _ = b.synthesize(TEXT, "heart", 1.0)
    assert again.tobytes() == first.tobytes()
    faster, _ = b.synthesize(TEXT, None, 1.5)
    assert faster.size < first.size
    with pytest.raises(InvalidRequestError, match="unknown voice"):
        b.synthesize("x", "zz", 1.0)


def test_a_stream_phonemizes_sentence_by_sentence_and_joins_to_the_whole_clip(
    loaded: HibariBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = " ".join(f"Sentence number {n} ends here." for n in range(1, 31))
    engine = loaded.engines["heart"]
    sentences: list[str] = []
    g2p = engine._g2p

    def counted(sentence: str) -> object:
        sentences.append(sentence)
        return g2p(sentence)

    monkeypatch.setattr(engine, "_g2p", counted)
    pieces = loaded.synthesize_stream(text, "heart", 1.0)
    first, _ = next(pieces)
    # The first audio waited for its own sentence's G2P, not all thirty (as hibari's `stream` would).
    assert len(sentences) == 1, sentences
    rest = [p for p, _ in pieces]
    assert len(sentences) == 30
    whole, _ = loaded.synthesize(text, "heart", 1.0)
    assert np.concatenate([first, *rest]).tobytes() == whole.tobytes()


def test_host_bytes_count_the_optimised_graph_and_the_g2p(loaded: HibariBackend) -> None:
    b = loaded
    assert b.optimised_for == CPU_ONLY and b.optimised["heart"] != b.model_bytes["heart"]
    onnx = len(b.model_bytes["heart"]) + len(b.optimised["heart"])
    # The G2P's lexicons, tagger and OOV net: tens of MB, measured as the memory its build took.
    assert b.stats().host_bytes >= onnx + 20_000_000
    # A restore needs room for the model on the device, not for the host-side helpers.
    assert b.stats().device_bytes == len(b.model_bytes["heart"]) < b.stats().host_bytes


def test_rss_bytes_sees_memory_being_made() -> None:
    before = rss_bytes()
    block = bytearray(64 << 20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    assert rss_bytes() - before >= 60 << 20


def test_optimised_bytes_are_used_only_for_the_providers_they_were_made_for(loaded: HibariBackend) -> None:
    b = loaded
    good, target = dict(b.optimised), b.optimised_for
    try:
        b.offload()
        b.optimised = {"heart": b"not a model"}
        b.optimised_for = ("CUDAExecutionProvider", "CPUExecutionProvider")
        b.restore()  # not made for the CPU: the original bytes are used
        assert "heart" in b.engines
        b.offload()
        b.optimised_for = CPU_ONLY
        with pytest.raises(Exception, match="INVALID_PROTOBUF"):
            b.restore()  # made for the CPU: used (and these are broken)
        assert b.engines == {}  # rolled back
    finally:
        b.optimised, b.optimised_for = good, target
        b.restore()


def test_a_fresh_backend_adopting_the_host_copy_speaks_the_same(loaded: HibariBackend) -> None:
    want, _ = loaded.synthesize(TEXT, "heart", 1.0)
    blobs = [Blob(x.key, dict(x.meta), memoryview(bytes(x.data))) for x in loaded.host_blobs()]
    assert {x.key for x in blobs} == {"heart", "heart@optimised"}
    fresh = HibariBackend(ModelSpec(name="hibari"), "cpu")
    fresh.adopt_host(blobs)
    assert fresh.engines == {} and fresh.optimised_for == CPU_ONLY
    assert fresh.optimised["heart"] == loaded.optimised["heart"]
    fresh.restore()  # builds the host side it did not get (G2P) and the session from the optimised bytes
    got, _ = fresh.synthesize(TEXT, "heart", 1.0)
    assert got.tobytes() == want.tobytes()
    assert fresh.stats().host_bytes == loaded.stats().host_bytes
    fresh.close()
    assert fresh.stats().host_bytes == 0 and fresh.g2p == {}


def test_cuda_asked_without_a_cuda_provider_runs_on_cpu() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this host has the CUDA provider")
    b = HibariBackend(ModelSpec(name="hibari"), "cuda:0")
    b.load()
    assert b.providers == ["CPUExecutionProvider"] and b.stats().device == "cpu"
    assert b.optimised_for == CPU_ONLY and "heart" in b.optimised
    b.close()


def test_only_offline_voices_are_offered() -> None:
    assert "heart" in available_voices()
    missing = [v for v in ("emma", "fenrir") if v not in available_voices()]
    if missing:
        b = HibariBackend(ModelSpec(name="hibari", voices=["heart", missing[0]]), "cpu")
        with pytest.raises(RuntimeError, match="not in the package or cache"):
            b.load()


def test_cuda_without_the_cuda_provider_says_why_it_runs_on_cpu() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this host has the CUDA provider")
    b = HibariBackend(ModelSpec(name="hibari"), "cuda:0")
    b.load()
    assert b.stats().note is not None and "onnxruntime-gpu" in b.stats().note
    b.close()
    cpu = HibariBackend(ModelSpec(name="hibari"), "cpu")
    cpu.load()
    assert cpu.stats().note is None  # asked for the CPU: nothing to say
    cpu.close()


def test_a_cuda_provider_that_does_not_load_is_reported_and_its_graph_cached_per_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import onnxruntime as ort

    from tts_runtime.engine import hibari_backend

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this host has the CUDA provider")
    # An onnxruntime that lists the CUDA provider whose libraries then fail to load (what a GPU image
    # without cuDNN gives): the session quietly runs on CPU.
    preloads: list[bool] = []
    available = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *available])
    monkeypatch.setattr(ort, "preload_dlls", lambda **kw: preloads.append(True), raising=False)
    monkeypatch.setattr(hibari_backend, "_PRELOADED", [])
    b = HibariBackend(ModelSpec(name="hibari"), "cuda:0")
    b.load()
    try:
        assert preloads == [True]  # the CUDA libraries were made loadable before the first session
        assert b.providers == ["CPUExecutionProvider"] and b.stats().device == "cpu"
        assert "did not load" in (b.stats().note or "")
        # The graph kept for the CUDA providers: provider-independent optimisations only, so it loads
        # again (a CUDA-optimised graph would carry Memcpy nodes).
        assert b.optimised_for == ("CUDAExecutionProvider", "CPUExecutionProvider")
        cpu = HibariBackend(ModelSpec(name="hibari"), "cpu")
        cpu.model_bytes = b.model_bytes
        assert b.optimised["heart"] != cpu._optimise(b.model_bytes["heart"], CPU_ONLY)
        before, _ = b.synthesize(TEXT, "heart", 1.0)
        b.offload()
        b.restore()  # built from the cached graph
        assert b.synthesize(TEXT, "heart", 1.0)[0].tobytes() == before.tobytes()
    finally:
        b.close()


def test_a_standby_prepares_the_optimised_graphs_of_a_first_load_ahead(loaded: HibariBackend) -> None:
    b = HibariBackend(ModelSpec(name="hibari", voices=["heart"]), "cpu")
    b.prepare(first_load=True)  # G2P and, in a thread meanwhile, the voices read and optimised
    graphs = b.optimised
    assert graphs and b.optimised_for == CPU_ONLY and b.g2p and not b.engines
    b.load()
    assert b.optimised is graphs  # the load used them: nothing read or optimised again
    text = "Prepared ahead, it says the same."
    assert b.synthesize(text, "heart", 1.0)[0].tobytes() == loaded.synthesize(text, "heart", 1.0)[0].tobytes()
    b.close()
