"""Models executing in worker processes: lifecycle, shared memory, standby, crashes, hangs, hibari."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from support.procs import wait_for
from tts_contract import ModelSpec, State
from tts_runtime.engine import Engine, blank
from tts_runtime.engine import executor as executor_module
from tts_runtime.engine import worker as worker_module
from tts_runtime.engine.cancel import Cancel
from tts_runtime.engine.errors import (
    InsufficientGpuMemoryError,
    InvalidRequestError,
    ModelLoadError,
    WorkerCrashedError,
)
from tts_runtime.engine.worker import WorkerExecutor

pytestmark = pytest.mark.slow
FAULTS = "support.faults"
KEEP = {"offloadAfterUse": False}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def worker_pids(e: Engine) -> list[int]:
    return e.pids()[1:]


def shm_blocks() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob(f"tts-{os.getpid()}-*")}


def executor(e: Engine, name: str = "tiny") -> WorkerExecutor:
    ex = e._slot(name).executor
    assert isinstance(ex, WorkerExecutor)
    return ex


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mp.active_children()  # reaps exited children, so a dead one stops answering os.kill
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def model_children() -> list[str]:
    return [c.name for c in mp.active_children() if c.name.startswith("tts-")]


def test_keep_worker_lifecycle_and_release_ends_the_worker(make_engine, tiny_spec) -> None:
    e = make_engine([tiny_spec(execution="worker", cpu_mode="keep-worker", policy=KEEP)])
    assert worker_pids(e) == []  # nothing at start-up
    with e.lease("tiny") as lease:
        before = lease.synthesize("same words", voice="bass").samples
    [pid] = worker_pids(e)
    assert pid != os.getpid() and alive(pid)
    r = e.offload("tiny")
    assert r.state == State.CPU and r.host_bytes > 0 and worker_pids(e) == [pid]
    with e.lease("tiny") as lease:
        after = lease.synthesize("same words", voice="bass").samples
    assert before.tobytes() == after.tobytes()
    r = e.release("tiny")
    assert r.state == State.UNLOADED and r.host_bytes == 0 and worker_pids(e) == []
    assert not alive(pid)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")
def test_exit_worker_keeps_the_host_copy_in_shared_memory(make_engine, tiny_spec) -> None:
    e = make_engine([tiny_spec(execution="worker", cpu_mode="exit-worker", policy=KEEP)])
    with e.lease("tiny") as lease:
        before = lease.synthesize("shared").samples
    [pid] = worker_pids(e)
    r = e.offload("tiny")
    assert r.state == State.CPU and r.host_bytes > 0
    assert worker_pids(e) == [] and not alive(pid)  # `cpu` holds no process at all
    [block] = shm_blocks()
    assert os.path.getsize(f"/dev/shm/{block}") >= r.host_bytes
    with e.lease("tiny") as lease:
        after = lease.synthesize("shared").samples
    [pid2] = worker_pids(e)
    assert pid2 != pid and before.tobytes() == after.tobytes()
    e.offload("tiny")
    e.release("tiny")
    assert shm_blocks() == set() and worker_pids(e) == []


def test_worker_killed_mid_request_gives_a_clear_error_and_recovers(make_engine, tiny_spec) -> None:
    e = make_engine([tiny_spec(execution="worker", factory=f"{FAULTS}:crashing_factory", policy=KEEP)])
    with e.lease("tiny") as lease, pytest.raises(WorkerCrashedError) as err:
        lease.synthesize("crash")
    assert err.value.status == 503 and "exited" in str(err.value)
    r = e.model_report("tiny")
    assert r.state == State.UNLOADED and "exited" in (r.error or "") and r.leases == 0
    assert worker_pids(e) == []
    with e.lease("tiny") as lease:  # the next request loads a fresh worker
        assert lease.synthesize("fine").samples.size == 4 * 160
    assert e.model_report("tiny").error is None


def test_worker_killed_from_outside_while_a_request_runs(make_engine, tiny_spec) -> None:
    spec = tiny_spec(execution="worker", options={"delay_seconds": 3.0}, policy=KEEP)
    e = make_engine([spec])
    e.load("tiny")
    [pid] = worker_pids(e)
    errors: list[BaseException] = []

    def request() -> None:
        try:
            with e.lease("tiny") as lease:
                lease.synthesize("slow")
        except BaseException as err:
            errors.append(err)

    t = threading.Thread(target=request)
    t.start()
    # The request holds its lease (its synthesis is sent or on its way) before the worker dies.
    wait_for(
        lambda: e.model_report("tiny").leases == 1, timeout=30, interval=0.02, what="the request's lease"
    )
    os.kill(pid, signal.SIGKILL)
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], WorkerCrashedError)
    assert e.model_report("tiny").state == State.UNLOADED and worker_pids(e) == []


def test_worker_load_hanging_past_its_timeout_is_stopped(make_engine, tiny_spec) -> None:
    spec = tiny_spec(execution="worker", factory=f"{FAULTS}:hanging_factory", load_timeout_seconds=4.0)
    e = make_engine([spec])
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        e.acquire("tiny")
    assert time.monotonic() - t0 < 20
    assert "loadTimeoutSeconds" in str(err.value)
    assert e.model_report("tiny").state == State.FAILED and worker_pids(e) == []


def test_hibari_in_a_worker(make_engine) -> None:
    from tts_contract import ModelSpec

    e = make_engine([ModelSpec(name="hibari", policy=KEEP)])
    assert "heart" in e.model_report("hibari").voices
    with e.lease("hibari") as lease:
        out = lease.synthesize("Hello there.", voice="heart")
        with pytest.raises(InvalidRequestError):
            lease.synthesize("Hello.", voice="no-such-voice")
    assert out.sample_rate == 24000 and out.samples.size > 24000 // 2
    r = e.offload("hibari")
    assert r.state == State.CPU and r.host_bytes >= 7_000_000
    with e.lease("hibari") as lease:
        again = lease.synthesize("Hello there.", voice="heart")
    assert again.samples.tobytes() == out.samples.tobytes()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")
def test_exit_worker_failed_restore_stays_cpu_without_a_process(make_engine, tiny_spec, tmp_path) -> None:
    options = {"counter_path": str(tmp_path / "restores")}
    spec = tiny_spec(
        execution="worker",
        cpu_mode="exit-worker",
        factory=f"{FAULTS}:oom_on_restore_factory",
        options=options,
        policy=KEEP,
    )
    e = make_engine([spec])
    with e.lease("tiny") as lease:
        before = lease.synthesize("again").samples
    e.offload("tiny")
    with pytest.raises(InsufficientGpuMemoryError):
        e.acquire("tiny")  # the new worker runs out of memory restoring
    r = e.model_report("tiny")
    assert r.state == State.CPU and r.vram_bytes == 0 and r.host_bytes > 0
    assert worker_pids(e) == []  # `cpu` in exit-worker mode: no CUDA context, only a standby
    standby = executor(e).standby_pid()
    assert standby is not None and alive(standby)
    assert len(shm_blocks()) == 1  # the host copy is still there
    with e.lease("tiny") as lease:
        assert lease.synthesize("again").samples.tobytes() == before.tobytes()
    assert worker_pids(e) == [standby]


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")
def test_exit_worker_standby_is_warm_without_cuda_and_serves_the_restore(make_engine, tiny_spec) -> None:
    e = make_engine([tiny_spec(execution="worker", cpu_mode="exit-worker", policy=KEEP)])
    with e.lease("tiny") as lease:
        before = lease.synthesize("warm").samples
    [pid] = worker_pids(e)
    ex = executor(e)
    assert ex.standby_pid() is None  # no standby while a worker serves
    e.offload("tiny")
    standby = ex.standby_pid()
    assert standby is not None and standby != pid and alive(standby) and gone(pid)
    assert worker_pids(e) == []  # the standby can hold no GPU memory, so it is not a GPU process
    status = ex.standby_status()
    assert status["pid"] == standby and status["cuda_initialized"] is False
    assert {"torch", "tts_runtime.engine.torch_backend", "support.tiny"} <= set(status["modules"])
    [block] = shm_blocks()
    assert block not in Path(f"/proc/{standby}/maps").read_text()  # maps nothing until restore
    with e.lease("tiny") as lease:
        after = lease.synthesize("warm").samples
    assert worker_pids(e) == [standby] and ex.standby_pid() is None  # the restore ran in the standby
    assert after.tobytes() == before.tobytes()
    e.offload("tiny")
    second = ex.standby_pid()
    assert second is not None and second != standby
    e.release("tiny")
    assert gone(second) and gone(standby) and model_children() == [] and shm_blocks() == set()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")
def test_a_dead_standby_is_replaced_by_a_cold_spawn(make_engine, tiny_spec) -> None:
    e = make_engine([tiny_spec(execution="worker", cpu_mode="exit-worker", policy=KEEP)])
    with e.lease("tiny") as lease:
        before = lease.synthesize("cold").samples
    e.offload("tiny")
    standby = executor(e).standby_pid()
    assert standby is not None
    os.kill(standby, signal.SIGKILL)
    assert gone(standby)
    with e.lease("tiny") as lease:
        assert lease.synthesize("cold").samples.tobytes() == before.tobytes()
    [pid] = worker_pids(e)
    assert pid != standby and e.model_report("tiny").error is None
    e.offload("tiny")
    assert executor(e).standby_pid() not in (None, standby, pid)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")
def test_standby_worker_off_leaves_no_process_and_shutdown_reaps_a_standby(make_engine, tiny_spec) -> None:
    spec = ModelSpec.model_validate(
        {
            "name": "off",
            "backend": "torch",
            "factory": "support.tiny:factory",
            "cpuMode": "exit-worker",
            "standbyWorker": False,
            "policy": KEEP,
        }
    )
    assert spec.standby_worker is False and tiny_spec().standby_worker is True
    e = make_engine([spec, tiny_spec(execution="worker", cpu_mode="exit-worker", policy=KEEP)])
    for name in ("off", "tiny"):
        e.load(name)
        e.offload(name)
    assert executor(e, "off").standby_pid() is None
    standby = executor(e, "tiny").standby_pid()
    assert standby is not None and model_children() == ["tts-standby-tiny"]
    e.shutdown(drain_timeout=5.0)
    assert gone(standby) and model_children() == []


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")
def test_hibari_exit_worker_standby_prepares_the_g2p_and_on_a_cpu_restores_ahead(make_engine) -> None:
    e = make_engine([ModelSpec(name="hibari", cpu_mode="exit-worker", policy=KEEP)])
    with e.lease("hibari") as lease:
        before = lease.synthesize("Hello there.").samples
    e.offload("hibari")
    ex = executor(e, "hibari")
    status = ex.standby_status(timeout=120)  # answered once the standby has prepared
    assert status["cuda_initialized"] is False
    assert status["prepared"] is True and "hibari.g2p" in status["modules"]
    assert status["restored_ahead"] is True  # a CPU device: the restore was done before it was asked
    assert status["warmed_up"] is True  # and a first synthesis, so the next request is a warm one
    standby = ex.standby_pid()
    with e.lease("hibari") as lease:
        after = lease.synthesize("Hello there.").samples
    assert after.tobytes() == before.tobytes()
    assert worker_pids(e) == [standby]


def test_engine_start_prespawns_the_worker_and_the_first_load_adopts_it(make_engine, tiny_spec) -> None:
    e = make_engine(
        [
            tiny_spec(execution="worker", policy=KEEP),
            tiny_spec("cold", execution="worker", standby_worker=False, policy=KEEP),
            tiny_spec("unused", execution="worker", policy=KEEP),
        ]
    )
    e.start()
    warm = e._verbs._prespawned["tiny"]
    status = warm.standby_status(timeout=120)
    assert status["cuda_initialized"] is False and "torch" in status["modules"]
    assert "cold" not in e._verbs._prespawned  # standbyWorker: false opts out
    unused = e._verbs._prespawned["unused"].standby_pid()
    assert worker_pids(e) == []  # a prespawned process holds nothing: not a model's worker yet
    with e.lease("tiny") as lease:
        assert lease.synthesize("first").samples.size == 5 * 160
    assert worker_pids(e) == [status["pid"]]  # the first load adopted the prespawned process
    e.shutdown(drain_timeout=5.0)
    assert unused is not None and gone(unused)  # shutdown ends what no load used


def test_hibari_prespawned_on_a_cpu_loads_and_warms_up_before_the_first_request(make_engine) -> None:
    e = make_engine([ModelSpec(name="hibari", policy=KEEP)])
    e.prespawn()  # what the CLI does before importing the web server
    warm = e._verbs._prespawned["hibari"]
    status = warm.standby_status(timeout=120)  # answered once the standby is ready: no request yet
    assert status["cuda_initialized"] is False
    assert status["loaded_ahead"] is True and status["restored_ahead"] is False
    assert status["warmed_up"] is True  # the session's first run happened off the request path
    assert e.model_report("hibari").state == State.UNLOADED
    with e.lease("hibari") as lease:
        first = lease.synthesize("Hello there.").samples
    assert worker_pids(e) == [status["pid"]]  # the load adopted the process that loaded ahead
    cold = make_engine([ModelSpec(name="hibari", standby_worker=False, policy=KEEP)])
    with cold.lease("hibari") as lease:  # loaded the usual way, on request: the same audio
        assert lease.synthesize("Hello there.").samples.tobytes() == first.tobytes()


def test_a_cancel_wakes_the_stream_waiting_on_its_worker(make_engine, tiny_spec, monkeypatch) -> None:
    # A plain Event is looked at every POLL_SECONDS; a Cancel wakes the wait itself, so none is needed.
    monkeypatch.setattr(worker_module, "POLL_SECONDS", 3600.0)
    e = make_engine([tiny_spec(execution="worker", options={"delay_seconds": 0.3}, policy=KEEP)])
    text = " ".join(f"This is sentence number {n} of a long story." for n in range(30))
    cancel = Cancel()
    with e.lease("tiny") as lease:
        pieces = lease.stream(text, cancel=cancel)
        assert next(pieces).samples.size > 0  # the thread then waits on the worker for the next one
        threading.Timer(0.05, cancel.set).start()
        rest = list(pieces)  # ends once the worker says it stopped (after the piece in progress)
    assert len(rest) < 29, "the stream ran to its end: the cancel did not reach the worker"
    with e.lease("tiny") as lease:  # the worker is free and its pipe in order
        assert lease.synthesize("again").samples.size == 5 * 160


def test_a_cancel_wakes_an_in_process_stream_too(make_engine, tiny_spec, monkeypatch) -> None:
    monkeypatch.setattr(executor_module, "POLL_SECONDS", 3600.0)  # no polling to fall back on
    e = make_engine([tiny_spec(options={"delay_seconds": 0.3}, policy=KEEP)])  # execution: inline
    text = " ".join(f"This is sentence number {n} of a long story." for n in range(30))
    cancel = Cancel()
    with e.lease("tiny") as lease:
        pieces = lease.stream(text, cancel=cancel)
        assert next(pieces).samples.size > 0
        threading.Timer(0.05, cancel.set).start()
        rest = list(pieces)  # ends once the model stopped (after the piece in progress)
    assert len(rest) < 29, "the stream ran to its end: the cancel did not reach the model"


def test_cancel_calls_its_wakers_once_set_and_not_after_they_are_forgotten() -> None:
    cancel = Cancel()
    calls: list[str] = []
    forget = cancel.on_set(lambda: calls.append("a"))
    cancel.on_set(lambda: calls.append("b"))
    assert calls == [] and not cancel.is_set()
    forget()
    cancel.set()
    assert cancel.is_set() and calls == ["b"]
    cancel.on_set(lambda: calls.append("late"))  # set already: called at once
    assert calls == ["b", "late"]


def test_a_blank_process_started_before_the_engine_becomes_its_first_worker(make_engine, tiny_spec) -> None:
    blank.start()  # what `tts-runtime serve` does before importing its settings and the web server
    [(early, _)] = blank._blanks
    e = make_engine([tiny_spec(execution="worker", policy=KEEP)])
    e.prespawn()
    warm = e._verbs._prespawned["tiny"]
    assert blank._blanks == [] and warm.standby_pid() == early.pid
    status = warm.standby_status(timeout=120)  # the blank, told its model, prepared as a standby
    assert status["pid"] == early.pid and "support.tiny" in status["modules"]
    with e.lease("tiny") as lease:
        assert lease.synthesize("first").samples.size == 5 * 160
    assert worker_pids(e) == [early.pid]


def test_a_blank_process_no_model_took_is_ended() -> None:
    blank.start()
    [(proc, _)] = blank._blanks
    blank.end_unused()
    assert blank._blanks == [] and gone(proc.pid) and proc.exitcode == 0
