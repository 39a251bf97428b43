"""cpuMode `suspend` through the engine with real workers and a fake CUDA driver behind the helper seam."""

from __future__ import annotations

import pytest
from test_cuda_checkpoint import FakeDriver

from tts_contract import State
from tts_runtime.engine.cuda_checkpoint import CUDA_ERROR_TIMEOUT, Probe, ProcessState, Suspender
from tts_runtime.engine.errors import WorkerCrashedError

pytestmark = pytest.mark.slow


class FakeHelper:
    """The engine's checkpoint helper, with the real state machine over a fake driver (any PID runs)."""

    def __init__(self, supported: bool = True) -> None:
        self.driver = FakeDriver()
        self.driver.states, self.driver.gpu = {}, {}
        self.supported = supported
        self.machines: dict[int, Suspender] = {}
        self.closed = False

    def _m(self, pid: int) -> Suspender:
        self.driver.states.setdefault(pid, ProcessState.RUNNING)
        return self.machines.setdefault(pid, Suspender(self.driver, pid))

    def probe(self) -> Probe:
        return Probe(self.supported, "fake driver" if self.supported else "driver older than 570")

    def suspend(self, pid: int) -> None:
        self._m(pid).suspend()

    def resume(self, pid: int) -> None:
        self._m(pid).resume()

    def before_kill(self, pid: int) -> None:
        self._m(pid).before_kill()

    def close(self) -> None:
        self.closed = True


def spec(tiny_spec, **kw):  # type: ignore[no-untyped-def]
    return tiny_spec("m", execution="worker", cpu_mode="suspend", policy={"offloadAfterUse": False}, **kw)


def test_suspend_keeps_the_worker_warm_and_every_failure_has_its_outcome(make_engine, tiny_spec) -> None:
    helper = FakeHelper()
    e = make_engine([spec(tiny_spec)], checkpoint=helper)
    assert e._slots["m"].cpu_mode == "suspend"
    with e.lease("m") as lease:
        before = lease.synthesize("warm").samples
    [pid] = e.pids()[1:]
    off = e.offload("m")
    assert off.state == State.CPU and off.vram_bytes == 0
    assert helper.driver.states[pid] == ProcessState.CHECKPOINTED and e.pids()[1:] == [pid]  # warm
    with e.lease("m") as lease:  # resumed: same process, same audio
        assert lease.synthesize("warm").samples.tobytes() == before.tobytes()
    assert helper.driver.states[pid] == ProcessState.RUNNING and e.pids()[1:] == [pid]

    # A CUDA call in flight: the lock times out, and the offload is the ordinary one.
    helper.driver.fail["lock"] = CUDA_ERROR_TIMEOUT
    assert e.offload("m").state == State.CPU
    assert helper.driver.states[pid] == ProcessState.RUNNING  # never checkpointed
    with e.lease("m") as lease:
        assert lease.synthesize("warm").samples.tobytes() == before.tobytes()

    # The driver cannot bring it back: the worker is ended (not re-checkpointed: its state is gone), the
    # model unloaded, and it loads again.
    e.offload("m")
    helper.driver.fail["restore"] = 999
    helper.driver.calls.clear()
    with pytest.raises(WorkerCrashedError, match="CUDA checkpoint"):
        e.restore("m")
    assert helper.driver.calls == ["restore"]
    assert e.model_report("m").state == State.UNLOADED and e.pids()[1:] == []
    with e.lease("m") as lease:
        assert lease.synthesize("warm").samples.tobytes() == before.tobytes()
    [fresh] = e.pids()[1:]
    assert fresh != pid

    # A worker that came back from a checkpoint is checkpointed again before release kills it.
    e.offload("m")
    e.restore("m")
    helper.driver.calls.clear()
    e.release("m")
    assert helper.driver.calls == ["lock", "checkpoint"] and e.pids()[1:] == []
    e.shutdown()
    assert helper.closed


def test_without_a_proven_driver_suspend_is_keep_worker(make_engine, tiny_spec, caplog) -> None:
    e = make_engine([spec(tiny_spec)], checkpoint=FakeHelper(supported=False))
    assert e._slots["m"].cpu_mode == "keep-worker"
    assert "older than 570" in caplog.text
    plain = make_engine([spec(tiny_spec)])  # a CPU engine never starts the helper
    assert plain._slots["m"].cpu_mode == "keep-worker" and "no GPU" in caplog.text
