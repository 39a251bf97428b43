"""Fixtures for the runtime tests: engines that are always shut down, tiny model specs, a manual clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from support.clock import ManualClock
from tts_contract import ModelSpec
from tts_runtime.engine import Engine
from tts_runtime.engine.lease import Transition

TINY = "support.tiny:factory"


def tiny_spec(name: str = "tiny", **kw: Any) -> ModelSpec:
    """A tiny torch model; executes in-process unless `execution="worker"` is given."""
    kw.setdefault("backend", "torch")
    kw.setdefault("factory", TINY)
    kw.setdefault("execution", "inline")
    return ModelSpec(name=name, **kw)


@pytest.fixture(name="tiny_spec")
def tiny_spec_fixture() -> Callable[..., ModelSpec]:
    return tiny_spec


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_engine() -> Iterator[Callable[..., Engine]]:
    """Build engines (device cpu, no GPU wait by default); every one is shut down after the test."""
    engines: list[Engine] = []

    def make(specs: list[ModelSpec], **kw: Any) -> Engine:
        kw.setdefault("device", "cpu")
        kw.setdefault("gpu_wait_seconds", 0.0)
        e = Engine(specs, **kw)
        engines.append(e)
        return e

    yield make
    for e in engines:
        e.shutdown(drain_timeout=5.0)
        assert e.pids()[1:] == [], "a worker process outlived shutdown"


@pytest.fixture
def events() -> Callable[[Engine], list[Transition]]:
    """`events(engine)` -> a list that fills with every transition the engine emits."""

    def attach(engine: Engine) -> list[Transition]:
        got: list[Transition] = []
        engine.subscribe(got.append)
        return got

    return attach
