"""The hibari backend in-process: bytes kept in RAM, session dropped on offload, same audio after restore."""

from __future__ import annotations

import pytest

from tts_runtime.engine import ModelSpec
from tts_runtime.engine.hibari_backend import HibariBackend, available_voices
from tts_runtime.residency import InvalidRequestError


def test_offload_drops_the_session_and_restore_rebuilds_it() -> None:
    b = HibariBackend(ModelSpec(name="hibari"), "cpu")
    b.load()
    assert "heart" in b.engines and b.stats().host_bytes > 7_000_000 and b.stats().sample_rate == 24000
    first, sr = b.synthesize("Good morning.", "heart", 1.0)
    assert sr == 24000 and first.dtype.name == "float32" and first.size > 0
    b.offload()
    assert b.engines == {} and b.stats().host_bytes > 7_000_000  # bytes stay in RAM
    b.restore()
    again, _ = b.synthesize("Good morning.", "heart", 1.0)
    assert again.tobytes() == first.tobytes()
    faster, _ = b.synthesize("Good morning.", None, 1.5)
    assert faster.size < first.size
    with pytest.raises(InvalidRequestError, match="unknown voice"):
        b.synthesize("x", "zz", 1.0)
    b.close()
    assert b.stats().host_bytes == 0


def test_only_offline_voices_are_offered() -> None:
    assert "heart" in available_voices()
    missing = [v for v in ("emma", "fenrir") if v not in available_voices()]
    if missing:
        b = HibariBackend(ModelSpec(name="hibari", voices=["heart", missing[0]]), "cpu")
        with pytest.raises(RuntimeError, match="not in the package or cache"):
            b.load()
