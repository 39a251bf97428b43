"""`suspend` through the CUDA checkpoint API, against a fake driver: every failure mode has its outcome."""

from __future__ import annotations

import pytest

from tts_runtime.engine.cuda_checkpoint import (
    CUDA_ERROR_TIMEOUT,
    CheckpointHelper,
    ProcessState,
    ResumeFailed,
    Suspender,
    SuspendRefused,
    managed_memory_requested,
    probe,
)

PID = 4242
GPU = 3 << 30


class FakeDriver:
    """The driver's view of processes: state per PID, GPU bytes held, and failures to inject."""

    def __init__(self, version: int = 12080, devices: int = 1) -> None:
        self.version, self.devices, self.missing = version, devices, []
        self.states = {PID: ProcessState.RUNNING}
        self.gpu = {PID: GPU}
        self.fail: dict[str, int] = {}  # call -> CUresult it returns (once)
        self.calls: list[str] = []

    def _go(self, call: str, pid: int, want: ProcessState, to: ProcessState) -> int:
        self.calls.append(call)
        if call in self.fail:
            return self.fail.pop(call)
        if self.states.get(pid) != want:
            return 1  # CUDA_ERROR_INVALID_VALUE: the call is not allowed in this state
        self.states[pid] = to
        return 0

    def driver_version(self) -> int:
        return self.version

    def device_count(self) -> int:
        return self.devices

    def lock(self, pid: int, timeout_ms: int) -> int:
        return self._go("lock", pid, ProcessState.RUNNING, ProcessState.LOCKED)

    def checkpoint(self, pid: int) -> int:
        rc = self._go("checkpoint", pid, ProcessState.LOCKED, ProcessState.CHECKPOINTED)
        if rc == 0:
            self.gpu[pid] = 0  # every byte, context included, moved to host memory
        return rc

    def restore(self, pid: int) -> int:
        rc = self._go("restore", pid, ProcessState.CHECKPOINTED, ProcessState.LOCKED)
        if rc == 0:
            self.gpu[pid] = GPU
        else:
            self.states[pid] = ProcessState.FAILED
        return rc

    def unlock(self, pid: int) -> int:
        return self._go("unlock", pid, ProcessState.LOCKED, ProcessState.RUNNING)

    def state(self, pid: int) -> tuple[int, ProcessState | None]:
        return 0, self.states.get(pid)


def test_suspend_frees_every_byte_and_resume_brings_them_back() -> None:
    d = FakeDriver()
    s = Suspender(d, PID)
    s.suspend()
    assert d.states[PID] == ProcessState.CHECKPOINTED and d.gpu[PID] == 0 and s.suspended
    s.suspend()  # idempotent: no second lock
    assert d.calls == ["lock", "checkpoint"]
    s.resume()
    assert d.states[PID] == ProcessState.RUNNING and d.gpu[PID] == GPU and s.restored_once


def test_a_lock_timeout_refuses_the_suspend_and_leaves_the_worker_running() -> None:
    d = FakeDriver()
    d.fail["lock"] = CUDA_ERROR_TIMEOUT
    s = Suspender(d, PID)
    with pytest.raises(SuspendRefused, match="timed out"):
        s.suspend()
    assert d.states[PID] == ProcessState.RUNNING and d.gpu[PID] == GPU and not s.suspended


def test_a_failed_checkpoint_unlocks_so_the_worker_runs_on() -> None:
    d = FakeDriver()
    d.fail["checkpoint"] = 2  # CUDA_ERROR_OUT_OF_MEMORY (host memory for the copy)
    with pytest.raises(SuspendRefused, match="Checkpoint"):
        Suspender(d, PID).suspend()
    assert d.calls == ["lock", "checkpoint", "unlock"] and d.states[PID] == ProcessState.RUNNING


def test_a_failed_restore_is_a_lost_worker() -> None:
    d = FakeDriver()
    s = Suspender(d, PID)
    s.suspend()
    d.fail["restore"] = 999
    with pytest.raises(ResumeFailed, match="Restore"):
        s.resume()
    assert s.suspended  # never reported as running: the caller ends it and the model is unloaded


def test_a_failed_unlock_after_restore_is_a_lost_worker_too() -> None:
    d = FakeDriver()
    s = Suspender(d, PID)
    s.suspend()
    d.fail["unlock"] = 999
    with pytest.raises(ResumeFailed, match="Unlock"):
        s.resume()


def test_a_restored_worker_is_checkpointed_again_before_it_is_killed() -> None:
    d = FakeDriver()
    fresh = Suspender(d, PID)
    fresh.before_kill()
    assert d.calls == []  # never checkpointed: nothing to do
    fresh.suspend()
    fresh.resume()
    d.calls.clear()
    fresh.before_kill()
    assert d.calls == ["lock", "checkpoint"] and d.states[PID] == ProcessState.CHECKPOINTED
    d2 = FakeDriver()
    busy = Suspender(d2, PID)
    busy.suspend()
    busy.resume()
    d2.fail["lock"] = CUDA_ERROR_TIMEOUT
    busy.before_kill()  # logged; the kill goes on


@pytest.mark.parametrize(
    ("driver", "reason"),
    [
        (FakeDriver(version=12060), "needs"),
        (FakeDriver(devices=2), "single-GPU"),
    ],
)
def test_the_probe_refuses_what_the_api_cannot_do(driver: FakeDriver, reason: str) -> None:
    got = probe(driver, spawn_child=False)
    assert not got.supported and reason in got.reason
    old = FakeDriver()
    old.missing = ["cuCheckpointProcessLock"]
    assert "older than 570" in probe(old, spawn_child=False).reason
    assert probe(FakeDriver(), spawn_child=False).supported


def test_unified_memory_turns_suspend_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert managed_memory_requested({"PYTORCH_CUDA_ALLOC_CONF": "use_uvm:True"})
    assert not managed_memory_requested({"PYTORCH_ALLOC_CONF": "expandable_segments:True"})
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "use_uvm:True")
    got = probe(FakeDriver(), spawn_child=False)
    assert not got.supported and "managed" in got.reason


@pytest.mark.slow
def test_the_persistent_helper_answers_the_probe_without_a_gpu() -> None:
    helper = CheckpointHelper()
    try:
        got = helper.probe()
        assert not got.supported and got.reason  # no libcuda here: off, with the reason
        assert helper.probe() is got  # probed once per engine
        with pytest.raises(RuntimeError, match="not probed"):
            helper.suspend(PID)
    finally:
        helper.close()
