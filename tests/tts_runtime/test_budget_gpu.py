"""The budget counts more than weights: the workspace a model used at its peak and, when a verb starts
a process, a CUDA context; both measured by workers and remembered by the engine."""

from __future__ import annotations

import pytest

from support.clock import ManualClock
from support.fakegpu import FakeGpu
from tts_contract import ModelSpec, Policy, State, Verb
from tts_runtime.engine.backends import Stats
from tts_runtime.engine.budget import GpuBudget
from tts_runtime.engine.errors import InsufficientGpuMemoryError
from tts_runtime.engine.slot import Slot

MB = 1 << 20


def slot(name: str = "m", cpu_mode: str = "keep-worker", execution: str = "worker", **kw: object) -> Slot:
    spec = ModelSpec(name=name, backend="torch", factory="support.tiny:factory", execution=execution, **kw)
    return Slot(spec=spec, device="cuda:0", cpu_mode=cpu_mode, policy=Policy(), voices=[])


def budget(*slots: Slot) -> GpuBudget:
    return GpuBudget({s.spec.name: s for s in slots}, FakeGpu(1 << 40), ManualClock(), 0.0)


def test_what_a_verb_needs_depends_on_whether_it_starts_a_process() -> None:
    keep, exit_, inline = slot("keep"), slot("exit", "exit-worker"), slot("inline", execution="inline")
    b = budget(keep, exit_, inline)
    assert b.needed(keep, Verb.LOAD) == 0  # nothing known: no check (as before)
    for s in (keep, exit_, inline):
        s.known_bytes = 100 * MB
        b.remember(s, Stats(device="cuda:0", workspace_bytes=30 * MB, context_bytes=500 * MB))
    assert b.needed(keep, Verb.LOAD) == 630 * MB  # weights + workspace + a new worker's context
    assert b.needed(keep, Verb.RESTORE) == 130 * MB  # keep-worker: its context is still there
    assert b.needed(exit_, Verb.RESTORE) == 630 * MB  # exit-worker: a new process, a new context
    assert b.needed(inline, Verb.LOAD) == 130 * MB  # in-process: no worker context to make


def test_a_load_into_a_shared_worker_a_peer_holds_needs_no_new_context() -> None:
    a, b = slot("a", worker_group="g"), slot("b", worker_group="g")
    own = slot("own")
    bud = budget(a, b, own)
    for s in (a, b, own):
        s.known_bytes = 100 * MB
        bud.remember(s, Stats(device="cuda:0", workspace_bytes=30 * MB, context_bytes=500 * MB))
    assert bud.needed(b, Verb.LOAD) == 630 * MB  # nobody in the process yet: it starts, with a context
    own.executor = object()  # type: ignore[assignment]  # a model outside the group changes nothing
    assert bud.needed(b, Verb.LOAD) == 630 * MB
    a.executor = object()  # type: ignore[assignment]  # a is loaded: the process and its context exist
    assert bud.needed(b, Verb.LOAD) == 130 * MB
    assert bud.needed(own, Verb.LOAD) == 630 * MB


def test_remembered_figures_keep_the_peak_and_a_first_load_borrows_a_known_context() -> None:
    a, new = slot("a"), slot("new", estimated_bytes=200 * MB)
    b = budget(a, new)
    b.remember(a, Stats(device="cuda:0", workspace_bytes=40 * MB, context_bytes=510 * MB))
    b.remember(a, Stats(device="cuda:0", workspace_bytes=10 * MB))  # a quieter period: the peak stays
    assert a.workspace_bytes == 40 * MB and a.context_bytes == 510 * MB
    # Never loaded: estimatedBytes plus the context another worker on this GPU measured.
    assert b.needed(new, Verb.LOAD) == 710 * MB


def test_a_restore_that_fits_the_weights_but_not_the_workspace_is_refused(make_engine, tiny_spec) -> None:
    clock = ManualClock()
    spec = tiny_spec("m", options={"size_bytes": MB}, policy={"offloadAfterUse": False})
    gpu = FakeGpu(2 * MB)
    e = make_engine([spec], device="cuda:0", gpu=gpu, clock=clock)
    e.load("m")
    e.offload("m")
    s = e._slots["m"]
    assert s.known_bytes >= MB
    s.workspace_bytes = 2 * MB  # as a worker measured it at its peak
    with pytest.raises(InsufficientGpuMemoryError) as err:
        e.restore("m")
    assert err.value.needed_bytes == s.known_bytes + 2 * MB
    assert e.model_report("m").state == State.CPU
    gpu.total_bytes = 8 * MB
    assert e.restore("m").state == State.GPU
