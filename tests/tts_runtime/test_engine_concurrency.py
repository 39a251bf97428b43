"""Leases under concurrency: many threads and tasks on one model while the monitor offloads it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import numpy as np
import pytest
import torch

from support.procs import wait_for
from support.tiny import TinyTTS
from tts_contract import PolicyPatch, State, Verb
from tts_runtime.engine import Engine
from tts_runtime.engine.errors import BusyError, InvalidRequestError


def test_concurrent_first_requests_cause_one_load(make_engine, tiny_spec, events) -> None:
    e = make_engine([tiny_spec(options={"delay_seconds": 0.01}, policy={"offloadAfterUse": False})])
    got = events(e)
    start = threading.Barrier(12)
    errors: list[BaseException] = []

    def request(i: int) -> None:
        try:
            start.wait(5)
            with e.lease("tiny") as lease:
                lease.synthesize(f"request {i}")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert [t.verb for t in got] == [Verb.LOAD]


def _hammer(
    e: Engine, n_threads: int, n_requests: int, errors: list[BaseException]
) -> list[threading.Thread]:
    def worker(k: int) -> None:
        for i in range(n_requests):
            try:
                with e.lease("tiny") as lease:
                    out = lease.synthesize(f"t{k} r{i}")
                    assert out.samples.size == len(f"t{k} r{i}") * 160
            except BaseException as err:
                errors.append(err)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    return threads


async def test_threads_and_tasks_while_the_monitor_offloads(make_engine, tiny_spec, events) -> None:
    # offloadAfterUse: the monitor offloads every time the last lease ends, racing the next request.
    e = make_engine([tiny_spec(options={"delay_seconds": 0.002})])
    got = events(e)
    e.start()
    errors: list[BaseException] = []
    threads = _hammer(e, 6, 15, errors)

    async def task(k: int) -> None:
        for i in range(10):
            async with e.alease("tiny") as lease:
                await lease.asynthesize(f"task {k} {i}")
            await asyncio.sleep(0)

    await asyncio.gather(*(task(k) for k in range(6)))
    for t in threads:
        t.join(60)
    assert errors == []  # TinyTTS raises if it is ever offloaded under a request
    for _ in range(250):  # the monitor offloads after the last lease; let it settle
        if e.model_report("tiny").state == State.CPU:
            break
        await asyncio.sleep(0.02)
    verbs = [t.verb for t in got]
    assert verbs.count(Verb.LOAD) == 1
    assert all(t.ok for t in got)
    assert verbs.count(Verb.OFFLOAD) >= 1
    assert verbs.count(Verb.RESTORE) == verbs.count(Verb.OFFLOAD) - 1  # every restore followed by an offload
    assert e.model_report("tiny").leases == 0


def test_admin_offload_and_release_race_requests(make_engine, tiny_spec) -> None:
    e = make_engine([tiny_spec(options={"delay_seconds": 0.002}, policy={"offloadAfterUse": False})])
    errors: list[BaseException] = []
    threads = _hammer(e, 4, 25, errors)
    admin_errors: list[BaseException] = []

    def admin() -> None:
        for i in range(30):
            try:
                (e.offload if i % 3 else e.release)("tiny", timeout=10)
            except BaseException as err:
                admin_errors.append(err)

    a = threading.Thread(target=admin)
    a.start()
    for t in [*threads, a]:
        t.join(60)
    assert errors == [] and admin_errors == []
    r = e.model_report("tiny")
    assert r.leases == 0 and r.state in (State.GPU, State.CPU, State.UNLOADED)


def test_admin_offload_is_not_starved_by_requests_that_always_overlap(make_engine, tiny_spec, events) -> None:
    """Two requests hand over to each other so that one lease is held at every moment: an admin offload
    used to wait for zero leases until its BusyError; new leases now wait behind it instead."""
    e = make_engine([tiny_spec(options={"delay_seconds": 0.0}, policy={"offloadAfterUse": False})])
    e.load("tiny")
    got = events(e)
    held = [threading.Event(), threading.Event()]
    stop = threading.Event()
    errors: list[BaseException] = []

    def relay(me: int) -> None:
        try:
            while not stop.is_set():
                with e.lease("tiny") as lease:
                    held[me].set()
                    lease.synthesize("relay")
                    held[1 - me].wait(1.0)  # end only once the other request holds its lease
                    held[me].clear()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=relay, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    assert held[0].wait(10) and held[1].wait(10)
    try:
        e.offload("tiny", timeout=5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    assert any(t.verb == Verb.OFFLOAD and t.ok for t in got)


async def test_cancelled_async_lease_does_not_leak(make_engine, tiny_spec) -> None:
    e = make_engine([tiny_spec(options={"delay_seconds": 0.0})])
    # Cancel while the first load is still running in its thread.
    task = asyncio.create_task(_take(e))
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for _ in range(200):
        if e.model_report("tiny").state == State.GPU and e.model_report("tiny").leases == 0:
            break
        await asyncio.sleep(0.02)
    assert e.model_report("tiny").leases == 0
    assert e.release("tiny", timeout=2).state == State.UNLOADED


async def _take(e: Engine) -> None:
    async with e.alease("tiny") as lease:
        await lease.asynthesize("never")


# -- several requests in one worker (engine/dispatch.py) -------------------------------------------
def _expected(text: str, voice: str = "alto") -> np.ndarray:
    with torch.inference_mode():
        samples, _ = TinyTTS().synthesize(text, voice, 1.0)
    return samples.numpy()


def _peak(e: Engine, name: str = "tiny") -> int:
    with e.lease(name) as lease:
        return int(lease.synthesize("peak?").samples[0])


@pytest.mark.slow
def test_requests_run_together_in_one_worker_up_to_its_concurrency(make_engine, tiny_spec) -> None:
    opts = {"delay_seconds": 0.3, "concurrency": 3}
    e = make_engine([tiny_spec(execution="worker", options=opts, policy={"offloadAfterUse": False})])
    e.load("tiny")
    start = threading.Barrier(6)
    outs: dict[int, np.ndarray] = {}

    def request(i: int) -> None:
        start.wait(10)
        with e.lease("tiny") as lease:
            outs[i] = lease.synthesize(f"words {i}").samples

    threads = [threading.Thread(target=request, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outs) == list(range(6))
    for i, got in outs.items():
        np.testing.assert_allclose(got, _expected(f"words {i}"), rtol=0, atol=1e-6)
    assert _peak(e) == 3  # six requests, three at a time: never more than the plug-in takes
    assert len(e.pids()) == 2  # still one worker


@pytest.mark.slow
def test_memory_verb_in_a_worker_waits_for_requests_in_flight(make_engine, tiny_spec) -> None:
    # Straight to the executor, past the engine's leases: the worker itself must not offload under a request.
    e = make_engine([tiny_spec(execution="worker", options={"delay_seconds": 0.5, "concurrency": 2})])
    e.load("tiny")
    ex = e._slot("tiny").executor
    assert ex is not None
    got: list[np.ndarray] = []
    sent = threading.Event()

    def request() -> None:
        sent.set()
        got.append(ex.synthesize("in flight", None, 1.0, 30.0)[0])

    # On a CPU an offload moves nothing and never reaches the worker: send it there all the same.
    ex.moves_nothing = False
    t = threading.Thread(target=request)
    t.start()
    sent.wait(5)
    # The worker has the request in hand (its 0.5 s synthesis runs) before the offload is sent.
    wait_for(lambda: ex.synthesize("peak?", None, 1.0, 30.0)[0][0] >= 1, what="the request in the worker")
    ex.offload()
    t.join(30)
    # TinyTTS raises if it is offloaded under a request: a result says the offload waited for it. (Whether
    # the request's thread appended it before offload() returned is that thread's scheduling, not the order
    # in the worker, which replies to the request before it starts the offload.)
    assert len(got) == 1, "the request in flight failed: the offload ran under it"
    np.testing.assert_allclose(got[0], _expected("in flight"), rtol=0, atol=1e-6)
    ex.restore(30.0)


@pytest.mark.slow
def test_dynamic_batching_in_a_worker(make_engine, tiny_spec) -> None:
    spec = tiny_spec(
        execution="worker",
        factory="support.tiny:batch_factory",
        options={"delay_seconds": 0.3, "max_batch_size": 4},
        policy={"offloadAfterUse": False},
    )
    e = make_engine([spec])
    e.load("tiny")
    start = threading.Barrier(10)  # nine clients and this thread
    outs: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def request(i: int) -> None:
        start.wait(10)
        try:
            with e.lease("tiny") as lease:
                voice = "bass" if i % 2 else None
                outs[i] = lease.synthesize(f"batch {i}", voice=voice).samples
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(9)]
    for t in threads:
        t.start()
    start.wait(10)
    # A bad request in the crowd fails alone.
    with e.lease("tiny") as lease, pytest.raises(InvalidRequestError, match="unknown voice"):
        lease.synthesize("bad", voice="soprano")
    for t in threads:
        t.join(60)
    assert errors == []
    for i, got in outs.items():
        want = _expected(f"batch {i}", "bass" if i % 2 else "alto")
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    with e.lease("tiny") as lease:
        batches = [int(b) for b in lease.synthesize("batches?").samples]
    assert max(batches) > 1 and max(batches) <= 4  # requests that waited together ran as one call
    assert len(batches) < 10


@pytest.mark.slow
def test_many_requests_in_a_worker_with_verbs_and_policy_changes(make_engine, tiny_spec, events) -> None:
    opts = {"delay_seconds": 0.003, "concurrency": 4}
    e = make_engine([tiny_spec(execution="worker", options=opts)], admin_timeout=20.0)
    got = events(e)
    e.start()
    errors: list[BaseException] = []
    stop = threading.Event()

    def client(k: int) -> None:
        for i in range(10):
            text = f"c{k} r{i}"
            try:
                with e.lease("tiny") as lease:
                    out = lease.synthesize(text).samples
                np.testing.assert_allclose(out, _expected(text), rtol=0, atol=1e-6)
            except BaseException as err:
                errors.append(err)
            time.sleep(0.01)  # clients pause, so admin verbs find the model free now and then

    def admin() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                if i % 6 == 0:
                    e.release("tiny", timeout=20)
                elif i % 3 == 1:
                    e.set_policy("tiny", PolicyPatch(offload_after_use=bool(i % 8 == 1)))
                else:
                    e.offload("tiny", timeout=20)
            except BusyError:
                pass  # requests kept the model leased for the whole wait: allowed, nothing lost
            except BaseException as err:
                errors.append(err)
            time.sleep(0.02)

    clients = [threading.Thread(target=client, args=(k,)) for k in range(5)]
    a = threading.Thread(target=admin)
    for t in [*clients, a]:
        t.start()
    for t in clients:
        t.join(120)
    stop.set()
    a.join(60)
    assert errors == []
    verbs = [t.verb for t in got]
    assert all(t.ok for t in got), [t for t in got if not t.ok]
    assert Verb.OFFLOAD in verbs and Verb.RELEASE in verbs
    r = e.model_report("tiny")
    assert r.leases == 0
    assert len(e.pids()) == (2 if r.state in (State.GPU, State.CPU) else 1)
