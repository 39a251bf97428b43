"""The engine's state machine on an in-process tiny model: lazy load, verbs, policy, idle timers, report."""

from __future__ import annotations

import numpy as np
import pytest

from tts_contract import PolicyPatch, State, Verb
from tts_runtime.engine import Engine
from tts_runtime.engine.errors import InvalidRequestError, InvalidTransitionError, UnknownModelError


def states(engine: Engine) -> dict[str, str]:
    return {m.name: m.state.value for m in engine.report().models}


def test_nothing_loads_until_the_first_request(make_engine, tiny_spec, events) -> None:
    e = make_engine([tiny_spec("a"), tiny_spec("b")])
    got = events(e)
    e.start()
    assert states(e) == {"a": "unloaded", "b": "unloaded"} and got == []
    with e.lease("a") as lease:
        assert e.model_report("a").leases == 1 and e.model_report("a").state == State.GPU
        out = lease.synthesize("hello", voice="bass", speed=1.0)
    assert out.samples.dtype == np.float32 and out.samples.shape == (5 * 160,) and out.sample_rate == 16000
    assert states(e)["b"] == "unloaded"
    first = got[0]
    assert (first.model, first.verb, first.from_state, first.to_state, first.ok) == (
        "a",
        Verb.LOAD,
        State.UNLOADED,
        State.GPU,
        True,
    )


def test_admin_verbs_walk_the_states(make_engine, tiny_spec, events) -> None:
    e = make_engine([tiny_spec(policy={"offloadAfterUse": False})])
    got = events(e)
    with pytest.raises(InvalidTransitionError):
        e.restore("tiny")  # nothing to restore from
    assert e.load("tiny").state == State.GPU
    assert e.load("tiny").state == State.GPU  # no-op, no second load
    r = e.offload("tiny")
    assert r.state == State.CPU and r.host_bytes > 0 and r.vram_bytes == 0
    assert e.offload("tiny").state == State.CPU  # already off the GPU: no-op
    assert e.restore("tiny").state == State.GPU
    r = e.release("tiny")
    assert r.state == State.UNLOADED and r.host_bytes == 0
    assert [t.verb for t in got] == [Verb.LOAD, Verb.OFFLOAD, Verb.RESTORE, Verb.RELEASE]
    assert all(t.ok and t.seconds >= 0 for t in got)
    assert set(e.model_report("tiny").transitions) == {"load", "offload", "restore", "release"}


def test_outputs_identical_after_offload_and_restore(make_engine, tiny_spec) -> None:
    e = make_engine([tiny_spec(policy={"offloadAfterUse": False})])
    with e.lease("tiny") as lease:
        before = lease.synthesize("The same words.").samples
    e.offload("tiny")
    with e.lease("tiny") as lease:
        after = lease.synthesize("The same words.").samples
    assert e.model_report("tiny").transitions.keys() >= {"offload", "restore"}
    assert before.tobytes() == after.tobytes()


def test_offload_after_use_with_the_monitor_step(make_engine, tiny_spec, clock) -> None:
    e = make_engine([tiny_spec()], clock=clock)
    e.load("tiny")
    e.tick()
    assert states(e)["tiny"] == "gpu"  # pre-warmed, not used: stays
    with e.lease("tiny") as lease:
        lease.synthesize("x")
        e.tick()
        assert states(e)["tiny"] == "gpu"  # leased: never offloaded under a request
    e.tick()
    assert states(e)["tiny"] == "cpu"


def test_idle_timers_with_an_injected_clock(make_engine, tiny_spec, clock) -> None:
    policy = {"offloadAfterUse": False, "idleOffloadSeconds": 60, "idleReleaseSeconds": 300}
    e = make_engine([tiny_spec(policy=policy)], clock=clock)
    with e.lease("tiny") as lease:
        lease.synthesize("x")
    assert e.tick() == pytest.approx(60)
    clock.advance(59)
    e.tick()
    assert states(e)["tiny"] == "gpu"
    assert e.model_report("tiny").idle_seconds == pytest.approx(59)
    clock.advance(1)
    e.tick()
    assert states(e)["tiny"] == "cpu"
    clock.advance(299)
    e.tick()
    assert states(e)["tiny"] == "cpu"
    clock.advance(1)
    e.tick()
    r = e.model_report("tiny")
    assert r.state == State.UNLOADED and r.host_bytes == 0


def test_policy_changes_at_run_time(make_engine, tiny_spec, clock) -> None:
    e = make_engine([tiny_spec(policy={"offloadAfterUse": False})], clock=clock)
    with e.lease("tiny") as lease:
        lease.synthesize("x")
    clock.advance(30)
    e.tick()
    assert states(e)["tiny"] == "gpu"
    new = e.set_policy("tiny", PolicyPatch.model_validate({"idleOffloadSeconds": 10}))
    assert new.idle_offload_seconds == 10 and new.offload_after_use is False  # untouched fields kept
    e.tick()
    assert states(e)["tiny"] == "cpu"
    assert e.model_report("tiny").policy.idle_offload_seconds == 10
    e.set_policy("tiny", PolicyPatch(pinned=True, idleReleaseSeconds=10))
    clock.advance(1000)
    e.tick()
    assert states(e)["tiny"] == "cpu"  # pinned: never moved automatically
    e.set_policy("tiny", PolicyPatch(pinned=False))
    e.tick()
    assert states(e)["tiny"] == "unloaded"


def test_pinned_model_stays_on_gpu(make_engine, tiny_spec, clock) -> None:
    e = make_engine([tiny_spec(policy={"pinned": True, "idleReleaseSeconds": 1})], clock=clock)
    with e.lease("tiny") as lease:
        lease.synthesize("x")
    clock.advance(10_000)
    e.tick()
    assert states(e)["tiny"] == "gpu"
    assert e.offload("tiny").state == State.CPU  # an admin still can


def test_report_and_resolve(make_engine, tiny_spec, clock) -> None:
    e = make_engine([tiny_spec("step-base"), tiny_spec("step-awq", variant="awq")], clock=clock)
    assert e.names() == ["step-base", "step-awq"]
    assert e.resolve("step-awq") == "step-awq"
    assert e.resolve("step:awq") == "step-awq" and e.resolve("step:base") == "step-base"
    assert e.resolve("tts-1") == "step-base" and e.resolve("gpt-4o-mini-tts") == "step-base"
    with pytest.raises(UnknownModelError) as err:
        e.resolve("nope")
    assert err.value.status == 404 and "step-base" in str(err.value)
    with pytest.raises(UnknownModelError):
        e.load("nope")
    with e.lease("step-awq") as lease:
        lease.synthesize("x")
    j = e.report().to_json()
    m = next(x for x in j["models"] if x["name"] == "step-awq")
    assert m["variant"] == "awq" and m["lastUsed"] is not None and m["leases"] == 0
    assert m["voices"] == ["alto", "bass"] and m["device"] == "cpu" and j["gpu"] is None
    assert set(m) >= {"vramBytes", "hostBytes", "idleSeconds", "error", "policy", "gpuDemandBytes"}


def test_bad_requests_are_client_errors_and_leave_the_model_alone(make_engine, tiny_spec) -> None:
    e = make_engine([tiny_spec()])
    with e.lease("tiny") as lease:
        for kw in ({"text": ""}, {"text": "x", "voice": "tenor"}, {"text": "x", "speed": 9.0}):
            with pytest.raises(InvalidRequestError) as err:
                lease.synthesize(**kw)  # type: ignore[arg-type]
            assert err.value.status == 400
        assert lease.synthesize("still fine").samples.size > 0


def test_release_while_leased_waits_then_times_out(make_engine, tiny_spec) -> None:
    from tts_runtime.engine.errors import BusyError

    e = make_engine([tiny_spec()])
    with e.lease("tiny"):
        with pytest.raises(BusyError) as err:
            e.release("tiny", timeout=0.2)
        assert "in flight" in str(err.value)
        assert states(e)["tiny"] == "gpu"
    assert e.release("tiny").state == State.UNLOADED


def test_shutdown_refuses_new_leases_and_releases_everything(tiny_spec) -> None:
    from tts_runtime.engine.errors import BusyError

    e = Engine([tiny_spec()], device="cpu")
    e.start()
    e.load("tiny")
    e.shutdown(drain_timeout=1.0)
    assert states(e) == {"tiny": "unloaded"}
    with pytest.raises(BusyError):
        e.acquire("tiny")


async def test_async_lease(make_engine, tiny_spec) -> None:
    e = make_engine([tiny_spec()])
    async with e.alease("tiny") as lease:
        out = await lease.asynthesize("async words", voice="alto")
        assert e.model_report("tiny").leases == 1
    assert out.samples.size == len("async words") * 160
    assert e.model_report("tiny").leases == 0
