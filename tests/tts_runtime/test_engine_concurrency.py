"""Leases under concurrency: many threads and tasks on one model while the monitor offloads it."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from tts_runtime.engine import Engine
from tts_runtime.residency import State, Verb


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
