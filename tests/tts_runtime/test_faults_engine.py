"""The engine under faults (issue 11): signals to the group, dead or stopped workers, stale and full
/dev/shm, plug-ins with their own tensors, models on another GPU, the idle monitor and no-op verbs."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from support.fakegpu import FakeGpu
from support.procs import wait_for
from tts_contract import PolicyPatch, State, Verb
from tts_runtime.engine import Engine
from tts_runtime.engine.errors import InsufficientGpuMemoryError
from tts_runtime.engine.lifecycle import process_state, sweep_stale_blocks

FAULTS = "support.faults"
KEEP = {"offloadAfterUse": False}


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for its reaper counts as exited)."""
    mp.active_children()  # reaps our own exited children
    return process_state(pid) in (None, "Z", "X")


def workers(e: Engine) -> list[int]:
    return e.pids()[1:]


# -- signals ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_worker_ignores_sigterm_and_sigint_sent_to_the_group(make_engine, tiny_spec, tmp_path) -> None:
    gate = tmp_path / "gate"
    spec = tiny_spec(
        execution="worker", factory=f"{FAULTS}:gated_factory", options={"gate": str(gate)}, policy=KEEP
    )
    e = make_engine([spec])
    e.load("tiny")
    [pid] = workers(e)
    result: list[int] = []

    def request() -> None:
        with e.lease("tiny") as lease:
            result.append(lease.synthesize("drained").samples.size)

    t = threading.Thread(target=request)
    t.start()
    wait_for(lambda: e.model_report("tiny").leases == 1, what="the request holds its lease")
    os.kill(pid, signal.SIGTERM)  # what a container runtime sends to every process of the group
    os.kill(pid, signal.SIGINT)
    gate.touch()
    t.join(30)
    assert result == [7 * 160]  # the request being drained is answered, by the same worker
    assert workers(e) == [pid] and not gone(pid)


# -- the parent dies -------------------------------------------------------------------------------------
DIES = textwrap.dedent(
    """
    import os, signal, sys, threading
    from tts_runtime.engine import Engine
    from tts_contract import ModelSpec
    spec = ModelSpec(name="tiny", backend="torch", factory="support.faults:hanging_factory",
                     policy={"offloadAfterUse": False})
    e = Engine([ModelSpec(name="ok", backend="torch", factory="support.tiny:factory",
                          policy={"offloadAfterUse": False}), spec], device="cpu")
    # Loaded from a thread that then ends: the parent-death signal must not fire for that.
    t = threading.Thread(target=e.load, args=("ok",)); t.start(); t.join()
    with e.lease("ok") as lease:
        assert lease.synthesize("alive").samples.size > 0
    threading.Thread(target=e.load, args=("tiny",), daemon=True).start()  # a load that hangs
    import time
    while len(mp_children := [c for c in __import__("multiprocessing").active_children()]) < 2:
        time.sleep(0.05)
    print(" ".join(str(c.pid) for c in mp_children), flush=True)
    sys.stdin.read()
    """
)


@pytest.mark.slow
def test_workers_die_with_a_sigkilled_engine() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", DIES], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(not gone(p) for p in pids)  # one idle worker, one stuck loading
        proc.kill()
        proc.wait(10)
        wait_for(lambda: all(gone(p) for p in pids), timeout=20, what="the orphaned workers to die")
    finally:
        proc.kill()
        proc.wait(10)


def test_a_worker_whose_engine_died_before_it_armed_the_signal_exits() -> None:
    code = "from tts_runtime.engine.lifecycle import become_worker\nbecome_worker(1)\nprint('alive')"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0 and "alive" not in out.stdout


# -- /dev/shm --------------------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")
def test_blocks_of_dead_engines_are_swept_at_start(make_engine, tiny_spec) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = Path(f"/dev/shm/tts-{dead.pid}-0123456789ab")
    mine_unowned = Path(f"/dev/shm/tts-{os.getpid()}-ba9876543210")  # a restarted container's old pid
    live = Path(f"/dev/shm/tts-{os.getppid()}-00aa00aa00aa")  # another runtime, still running
    for p in (stale, mine_unowned, live):
        p.write_bytes(b"x" * 4096)
    try:
        make_engine([tiny_spec(execution="worker")])
        assert not stale.exists() and not mine_unowned.exists()
        assert live.exists()
    finally:
        for p in (stale, mine_unowned, live):
            p.unlink(missing_ok=True)


def test_a_sweep_leaves_the_blocks_of_live_executors_alone(make_engine, tiny_spec) -> None:
    e = make_engine([tiny_spec(execution="worker", cpu_mode="exit-worker", policy=KEEP)])
    e.load("tiny")
    e.offload("tiny")
    blocks = {p.name for p in Path("/dev/shm").glob(f"tts-{os.getpid()}-*")}
    assert len(blocks) == 1
    sweep_stale_blocks()
    assert {p.name for p in Path("/dev/shm").glob(f"tts-{os.getpid()}-*")} == blocks
    with e.lease("tiny") as lease:
        assert lease.synthesize("still here").samples.size == 10 * 160


SMALL_SHM = textwrap.dedent(
    """
    import logging, os, sys
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
    from tts_runtime.engine import Engine
    from tts_contract import ModelSpec
    from tts_contract import State
    spec = ModelSpec(name="big", backend="torch", factory="support.tiny:factory",
                     options={"size_bytes": 8 << 20}, cpu_mode="exit-worker",
                     policy={"offloadAfterUse": False})
    e = Engine([spec], device="cpu")
    with e.lease("big") as lease:
        before = lease.synthesize("roomy").samples
    [pid] = e.pids()[1:]
    r = e.offload("big")
    assert r.state == State.CPU and r.host_bytes >= 8 << 20, r
    assert e.pids()[1:] == [pid]  # kept its worker: keep-worker
    with e.lease("big") as lease:
        assert lease.synthesize("roomy").samples.tobytes() == before.tobytes()
    e.offload("big")
    assert e.model_report("big").state == State.CPU
    e.shutdown(5)
    print("OK")
    """
)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_exit_worker_with_a_small_dev_shm_falls_back_to_keep_worker_with_a_warning() -> None:
    # A private 2 MiB /dev/shm (Docker's default is 64 MiB) for a model whose host copy takes 8 MiB.
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("unprivileged mount namespaces are not allowed here")
    script = f"mount -t tmpfs -o size=2m tmpfs /dev/shm && exec {sys.executable} -c '{SMALL_SHM}'"
    out = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=240, check=False
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("WARNING") == 1 and "keep-worker" in out.stdout  # said once, clearly


# -- a worker that dies or stops while idle -------------------------------------------------------------
@pytest.mark.slow
def test_a_worker_that_died_idle_is_noticed_reported_and_the_next_request_served(
    make_engine, tiny_spec, events
) -> None:
    e = make_engine([tiny_spec(execution="worker", policy=KEEP)])
    seen = events(e)
    e.load("tiny")
    [pid] = workers(e)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: e.model_report("tiny").state == State.UNLOADED, what="the death to be noticed")
    r = e.model_report("tiny")
    assert "exited" in (r.error or "") and "idle" in (r.error or "") and workers(e) == []
    assert seen[-1].verb == Verb.RELEASE and not seen[-1].ok
    with e.lease("tiny") as lease:  # served, not a 503
        assert lease.synthesize("again").samples.size == 5 * 160
    assert e.model_report("tiny").error is None


@pytest.mark.slow
def test_a_stopped_worker_is_reported_as_unable_to_serve(make_engine, tiny_spec) -> None:
    e = make_engine([tiny_spec(execution="worker", policy=KEEP)])
    e.load("tiny")
    assert e.cannot_serve() == {}
    [pid] = workers(e)
    os.kill(pid, signal.SIGSTOP)
    try:
        stuck = wait_for(e.cannot_serve, what="the stopped worker to be seen")
        assert list(stuck) == ["tiny"] and "stopped" in stuck["tiny"]
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: e.cannot_serve() == {}, what="the worker to run again")


def test_a_tts_request_timeout_default_a_user_would_choose(tiny_spec) -> None:
    spec = tiny_spec()
    assert spec.request_timeout_seconds is not None and spec.request_timeout_seconds <= 60


# -- load failures -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_load_failure_gives_clients_a_message_and_the_log_the_traceback(
    make_engine, tiny_spec, caplog
) -> None:
    spec = tiny_spec(
        execution="worker",
        factory=f"{FAULTS}:failing_factory",
        options={"message": "weights file is corrupt"},
    )
    e = make_engine([spec])
    with caplog.at_level(logging.ERROR), pytest.raises(Exception) as err:
        e.acquire("tiny")
    error = e.model_report("tiny").error or ""
    for text in (str(err.value), error):
        assert "weights file is corrupt" in text
        assert "Traceback" not in text and 'File "' not in text and "\n" not in text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Traceback" in logged and "failing_factory" in logged


# -- plug-ins keep their object graph in exit-worker mode ----------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("cpu_mode", ["keep-worker", "exit-worker"])
def test_restore_gives_a_plugin_its_own_tensors_and_parameters(make_engine, tiny_spec, cpu_mode) -> None:
    spec = tiny_spec(
        execution="worker", cpu_mode=cpu_mode, factory=f"{FAULTS}:own_tensors_factory", policy=KEEP
    )
    e = make_engine([spec])
    with e.lease("tiny") as lease:
        before = lease.synthesize("graph").samples
    for _ in range(2):
        e.offload("tiny")
        with e.lease("tiny") as lease:
            assert lease.synthesize("graph").samples.tobytes() == before.tobytes()


# -- the budget of a model on another GPU ---------------------------------------------------------------
def test_a_model_on_cuda_1_is_budgeted_on_its_own_gpu(make_engine, tiny_spec) -> None:
    size = 800
    on_gpu0: list[str] = []
    gpu0 = FakeGpu(1000, used=lambda: size * len(on_gpu0), index=0)
    a = tiny_spec("a", device="cuda:0", estimated_bytes=size, policy={"pinned": True})
    b = tiny_spec("b", device="cuda:1", estimated_bytes=size, policy=KEEP)
    c = tiny_spec("c", device="cuda:0", estimated_bytes=size, policy=KEEP)
    e = make_engine([a, b, c], device="cuda:0", gpu=gpu0)
    e.load("a")
    on_gpu0.append("a")
    e.load("b")  # GPU 0 is full, but b does not go there: not refused, nothing evicted
    assert e.model_report("b").state == State.GPU and e.model_report("a").state == State.GPU
    with pytest.raises(InsufficientGpuMemoryError) as err:
        e.load("c")  # c does go to GPU 0, where the pinned a leaves no room
    assert "cuda:0" in str(err.value)


# -- the idle monitor -------------------------------------------------------------------------------------
def test_the_monitor_is_woken_when_a_verb_ends(make_engine, tiny_spec) -> None:
    # (The contract's rule: without offload-after-use, release no earlier than the idle offload.)
    policy = {"offloadAfterUse": False, "idleOffloadSeconds": 0.5, "idleReleaseSeconds": 0.5}
    e = make_engine([tiny_spec(policy=policy)])
    e._wake.clear()
    e.load("tiny")  # an admin verb: the monitor must re-plan now (release due in 0.5 s), not in 5 s
    assert e._wake.is_set()


@pytest.mark.slow
def test_an_idle_release_comes_on_time_after_an_admin_load(make_engine, tiny_spec) -> None:
    # (The contract's rule: without offload-after-use, release no earlier than the idle offload.)
    policy = {"offloadAfterUse": False, "idleOffloadSeconds": 0.5, "idleReleaseSeconds": 0.5}
    e = make_engine([tiny_spec(policy=policy)])
    e.start()
    e.load("tiny")
    # Due 0.5 s after the load; the monitor's longest nap is 5 s.
    wait_for(lambda: e.model_report("tiny").state == State.UNLOADED, timeout=3.0, what="the idle release")


def test_pinning_during_an_automatic_offload_wins(make_engine, tiny_spec) -> None:
    e = make_engine([tiny_spec()])
    e.load("tiny")
    # On a CPU an offload moves nothing and is over at once: hold it at the executor, where the engine
    # hands it over, to pin the model while it runs.
    entered, gate = threading.Event(), threading.Event()
    executor = e._slot("tiny").executor
    offload = executor.offload

    def held_offload():  # type: ignore[no-untyped-def]
        entered.set()
        gate.wait(30)
        return offload()

    executor.offload = held_offload
    e.start()
    with e.lease("tiny") as lease:
        lease.synthesize("use")  # offload after use follows
    assert entered.wait(20), "the automatic offload did not start"
    e.set_policy("tiny", PolicyPatch.model_validate({"pinned": True}))
    gate.set()
    wait_for(
        lambda: e.model_report("tiny").state == State.GPU and not e._slot("tiny").busy,
        what="the pinned model back on the GPU",
    )


def test_a_release_of_an_unloaded_model_is_no_transition(make_engine, tiny_spec, events) -> None:
    e = make_engine([tiny_spec()])
    seen = events(e)
    assert e.release("tiny").state == State.UNLOADED
    assert seen == []


def test_hibari_reports_the_gpu_it_was_given_not_gpu_0() -> None:
    from tts_contract import ModelSpec
    from tts_runtime.engine.hibari_backend import CUDA, HibariBackend

    backend = HibariBackend(ModelSpec(name="hibari"), "cuda:1")
    # What a session on the CUDA provider leaves behind (no GPU on this host to build a real one).
    backend.providers, backend.engines = [CUDA, "CPUExecutionProvider"], {"heart": object()}
    assert backend.stats().device == "cuda:1"
