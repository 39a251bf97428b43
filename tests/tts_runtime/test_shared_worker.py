"""Models sharing one worker process (`workerGroup`): per-model residency, memory, crashes, concurrency."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tts_contract import ModelSpec, PolicyPatch, State, Verb
from tts_runtime.engine import Engine
from tts_runtime.engine.errors import BusyError, ModelLoadError, WorkerCrashedError
from tts_runtime.engine.lease import Transition
from tts_runtime.engine.models_file import ModelsFileError, parse_model_specs
from tts_runtime.engine.shared_worker import SharedExecutor

pytestmark = pytest.mark.slow
FAULTS = "support.faults"
KEEP = {"offloadAfterUse": False}
BIG = 96 << 20  # a model whose host copy shows clearly in the process's RSS
REQUESTS = 60  # per client thread
LONG = " ".join(["A sentence of some words."] * 12)  # longer than a first piece (160 characters)


def member(name: str, tiny_spec: Callable[..., ModelSpec], **kw: Any) -> ModelSpec:
    kw.setdefault("policy", KEEP)
    return tiny_spec(name, execution="worker", worker_group="small", **kw)


def worker_pids(e: Engine) -> list[int]:
    return e.pids()[1:]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def shared(e: Engine, name: str) -> SharedExecutor:
    ex = e._slot(name).executor
    assert isinstance(ex, SharedExecutor)
    return ex


def say(e: Engine, name: str, text: str) -> np.ndarray:
    with e.lease(name) as lease:
        return lease.synthesize(text, voice="bass").samples


def test_a_group_shares_one_process_and_release_frees_one_model_only(make_engine, tiny_spec) -> None:
    a = member("a", tiny_spec, options={"seed": 1})
    b = member("b", tiny_spec, options={"seed": 2, "size_bytes": BIG})
    own = tiny_spec("own", execution="worker", policy=KEEP, options={"seed": 1})
    e = make_engine([a, b, own])
    said = {n: say(e, n, "the same words") for n in ("a", "b", "own")}
    pa, pb, pown = (shared(e, "a").pids(), shared(e, "b").pids(), e._slot("own").executor.pids())  # type: ignore[union-attr]
    assert pa == pb and pa != pown and len(worker_pids(e)) == 2  # a and b in one process, `own` apart
    assert said["a"].tobytes() == said["own"].tobytes()  # same model, same seed: same audio either way
    assert said["a"].tobytes() != said["b"].tobytes()
    streamed = {}
    for name in ("a", "own"):  # streams too: pieces routed by request id to the right model's caller
        with e.lease(name) as lease:
            streamed[name] = [p.samples.tobytes() for p in lease.stream(LONG, "bass")]
    assert len(streamed["a"]) > 1 and streamed["a"] == streamed["own"]
    [pid] = pa
    before = rss_bytes(pid)
    r = e.release("b")
    assert r.state == State.UNLOADED and r.host_bytes == 0
    assert shared(e, "a").pids() == [pid]  # the process lives on for a ...
    assert before - rss_bytes(pid) > BIG // 2  # ... without b's host copy
    a_report = e.model_report("a")
    assert a_report.state == State.GPU and a_report.host_bytes > 0
    assert say(e, "a", "the same words").tobytes() == said["a"].tobytes()
    e.offload("a")  # a's own verbs, in the shared process
    assert e.model_report("a").state == State.CPU
    assert say(e, "b", "the same words").tobytes() == said["b"].tobytes()  # b loads back into it
    assert shared(e, "b").pids() == [pid]
    e.release("a")
    e.release("b")  # the last model out ends the process
    assert e._verbs.groups["small"].pid() is None and len(worker_pids(e)) == 1


def test_a_crash_unloads_every_model_of_the_process_and_each_recovers(
    make_engine, tiny_spec, events, tmp_path
) -> None:
    gate = tmp_path / "gate"
    crashing = member("crashing", tiny_spec, factory=f"{FAULTS}:crashing_factory")
    busy = member("busy", tiny_spec, factory=f"{FAULTS}:gated_factory", options={"gate": str(gate)})
    idle = member("idle", tiny_spec)
    e = make_engine([crashing, busy, idle])
    for name in ("crashing", "busy", "idle"):
        e.load(name)
    [pid] = worker_pids(e)
    seen = events(e)
    unloaded_idle = threading.Event()
    e.subscribe(lambda t: unloaded_idle.set() if t.model == "idle" and t.to_state == State.UNLOADED else None)
    errors: list[BaseException] = []

    def request() -> None:
        try:
            say(e, "busy", "waits at the gate")
        except BaseException as err:
            errors.append(err)

    t = threading.Thread(target=request)
    t.start()
    chan = shared(e, "busy")._chan
    deadline = time.monotonic() + 30
    while not (chan is not None and chan._waiting) and time.monotonic() < deadline:
        time.sleep(0.01)  # until busy's request has been sent to the process (it waits at the gate there)
    assert chan is not None and chan._waiting, "busy's request never reached the worker"
    with pytest.raises(WorkerCrashedError) as err:
        say(e, "crashing", "crash")
    assert err.value.status == 503 and "exited" in str(err.value)
    t.join(30)
    assert len(errors) == 1 and isinstance(errors[0], WorkerCrashedError)  # in flight: a clear error
    assert unloaded_idle.wait(30)  # the model with nothing in flight is told too
    for name in ("crashing", "busy", "idle"):
        r = e.model_report(name)
        assert r.state == State.UNLOADED and "exited" in (r.error or "") and r.leases == 0, name
    assert any(x.model == "idle" and x.verb == Verb.RELEASE and not x.ok for x in seen)
    gate.touch()
    for name in ("crashing", "busy", "idle"):
        assert say(e, name, "fine").size == 4 * 160  # each loads again, in a fresh process
        assert e.model_report(name).error is None
    [pid2] = worker_pids(e)
    assert pid2 != pid


def test_a_failed_load_in_a_shared_worker_leaves_its_peers_serving(make_engine, tiny_spec) -> None:
    ok = member("ok", tiny_spec)
    bad = member("bad", tiny_spec, factory=f"{FAULTS}:failing_factory")
    e = make_engine([ok, bad])
    before = say(e, "ok", "still here")
    [pid] = worker_pids(e)
    with pytest.raises(ModelLoadError, match="injected load failure"):
        e.load("bad")
    assert e.model_report("bad").state == State.FAILED
    assert worker_pids(e) == [pid] and e.model_report("ok").state == State.GPU
    assert say(e, "ok", "still here").tobytes() == before.tobytes()


def test_requests_to_two_models_with_verbs_and_policy_changes_interleaved(
    make_engine, tiny_spec, monkeypatch
) -> None:
    """Many requests to two models of one process while offload, release, load and policy changes of
    both run between them: every output equals the model's own, no request fails, no lease is lost."""
    # On a CPU offload and restore move nothing and never reach the worker: send them there all the same,
    # so the process's per-model verbs run between the requests (tiny raises if asked while offloaded).
    init = SharedExecutor.__init__

    def reaching(self: SharedExecutor, *args: Any, **kw: Any) -> None:
        init(self, *args, **kw)
        self.moves_nothing = False

    monkeypatch.setattr(SharedExecutor, "__init__", reaching)
    opts = {"delay_seconds": 0.005, "concurrency": 2}
    specs = [member(n, tiny_spec, options={**opts, "seed": s}) for n, s in (("a", 1), ("b", 2))]
    texts = ["one", "two words", "three little words", "a longer sentence of speech"]
    ref = make_engine([tiny_spec(s.name, options=s.options) for s in specs])  # each model on its own
    want = {(s.name, t): say(ref, s.name, t).tobytes() for s in specs for t in texts}
    e = make_engine(specs)
    transitions: list[Transition] = []
    e.subscribe(transitions.append)
    done = threading.Event()
    failures: list[str] = []
    served = [0]
    count = threading.Lock()

    cycled = threading.Event()  # the admin went through every verb on both models twice
    asked = [0]

    give_up = time.monotonic() + 240

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for k in itertools.count():  # at least REQUESTS, and on until the verbs have all run meanwhile
            if k >= REQUESTS and (cycled.is_set() or time.monotonic() > give_up):
                break
            name, text = rng.choice(("a", "b")), rng.choice(texts)
            with count:
                asked[0] += 1
            try:
                got = say(e, name, text).tobytes()
            except Exception as err:
                failures.append(f"{name} {text!r}: {type(err).__name__}: {err}")
                continue
            if got != want[(name, text)]:
                failures.append(f"{name} {text!r}: different audio")
            with count:
                served[0] += 1

    def admin() -> None:
        rng = random.Random(7)
        for i in itertools.count():  # every verb on both models, in turn, until the clients are done
            if done.is_set():
                break
            if i == 20:
                cycled.set()
            name, verb = "ab"[i % 2], ("release", "load", "offload", "policy", "load")[i // 2 % 5]
            try:
                if verb == "policy":
                    patch = rng.choice(
                        (
                            {"offloadAfterUse": True},
                            {"offloadAfterUse": False},
                            {"idleOffloadSeconds": 0.02, "idleReleaseSeconds": 0.05},
                            {"idleOffloadSeconds": 300, "idleReleaseSeconds": 0},
                        )
                    )
                    e.set_policy(name, PolicyPatch.model_validate(patch))
                else:
                    getattr(e, verb)(name, timeout=30.0)
            except BusyError:
                pass  # requests held it past the admin timeout: a legitimate answer, nothing lost
            except Exception as err:
                failures.append(f"admin {verb} {name}: {type(err).__name__}: {err}")
            time.sleep(rng.uniform(0.0, 0.05))

    clients = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    chaos = threading.Thread(target=admin)
    chaos.start()
    for t in clients:
        t.start()
    for t in clients:
        t.join(300)
    done.set()
    chaos.join(60)
    assert not failures, failures[:5]
    assert cycled.is_set(), "the admin verbs did not all run while requests were made"
    assert served[0] == asked[0] >= 4 * REQUESTS
    for name in ("a", "b"):
        r = e.model_report(name)
        assert r.leases == 0 and e._slot(name).leases == 0 and not e._slot(name).busy
    moved = {(t.model, t.verb) for t in transitions if t.ok}
    for name in ("a", "b"):  # the interleaving really happened, in the shared process, for both models
        assert {(name, Verb.LOAD), (name, Verb.RELEASE), (name, Verb.OFFLOAD), (name, Verb.RESTORE)} <= moved
    assert len(worker_pids(e)) <= 1  # never a second process for the group


def test_what_cannot_apply_to_one_model_of_a_shared_process_is_refused(tiny_spec) -> None:
    with pytest.raises(ValueError, match="cpuMode 'exit-worker' ends or suspends the whole worker"):
        tiny_spec("a", execution="worker", worker_group="g", cpu_mode="exit-worker")
    with pytest.raises(ValueError, match="cpuMode 'suspend'"):
        tiny_spec("a", execution="worker", worker_group="g", cpu_mode="suspend")
    with pytest.raises(ValueError, match="workerGroup needs execution 'worker'"):
        tiny_spec("a", execution="inline", worker_group="g")
    with pytest.raises(ValueError, match="different devices"):
        Engine(
            [
                tiny_spec("a", execution="worker", worker_group="g", device="cpu"),
                tiny_spec("b", execution="worker", worker_group="g", device="cuda:1"),
            ],
            device="cpu",
        )
    two_devices = [
        {"name": "a", "workerGroup": "g", "device": "cpu"},
        {"name": "b", "workerGroup": "g"},
    ]
    with pytest.raises(ModelsFileError, match="workerGroup 'g' name different devices"):
        parse_model_specs({"models": two_devices})
    with pytest.raises(ModelsFileError, match="workerGroup"):
        parse_model_specs({"models": [{"name": "a", "workerGroup": "no spaces"}]})
