"""On a real GPU (issue: the GPU path): NVML identity of workers, exact pinning of the exit-worker block,
workspace and context measured for the budget, hibari on the CUDA provider, and `suspend` where the
driver supports it. `pytest -m gpu`; bench/gpu_check.sh runs these first."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tts_contract import ModelSpec, State
from tts_runtime.engine import Engine, NvmlProbe

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
SIZE = 256 << 20
TINY = "support.tiny:factory"


def spec(cpu_mode: str, **kw: object) -> ModelSpec:
    return ModelSpec(
        name="tiny",
        backend="torch",
        factory=TINY,
        options={"size_bytes": SIZE},
        cpu_mode=cpu_mode,
        policy={"offloadAfterUse": False},
        **kw,
    )


def settle(ok: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_a_worker_knows_its_nvml_pid_and_a_cpu_model_reports_its_context() -> None:
    probe = NvmlProbe()
    e = Engine([spec("keep-worker")], device="cuda:0", gpu=probe)
    try:
        e.load("tiny")
        stats = e._slots["tiny"].stats
        assert stats is not None and stats.gpu_pids, "the worker did not find itself in NVML's list"
        procs = probe.processes() or {}
        assert stats.gpu_pids[0] in procs and stats.context_bytes > 0
        assert e._slots["tiny"].context_bytes == stats.context_bytes  # remembered for the budget
        off = e.offload("tiny")
        # keep-worker `cpu` holds the context: reported, not ~0.
        assert off.vram_bytes >= stats.context_bytes // 2 > 0
    finally:
        e.shutdown(drain_timeout=5)


def test_exit_worker_restore_copies_from_the_registered_shared_block() -> None:
    e = Engine([spec("exit-worker")], device="cuda:0")
    try:
        with e.lease("tiny") as lease:
            before = lease.synthesize("pinned block").samples
        e.offload("tiny")
        e.restore("tiny")
        stats = e._slots["tiny"].stats
        assert stats is not None and stats.pinned_bytes == stats.host_bytes >= SIZE  # exact, not rounded
        assert stats.pin_seconds > 0  # the registration's cost, in the report of the restore
        with e.lease("tiny") as lease:
            assert lease.synthesize("pinned block").samples.tobytes() == before.tobytes()
    finally:
        e.shutdown(drain_timeout=5)


def test_the_workspace_a_model_used_is_measured_and_counted() -> None:
    e = Engine([spec("keep-worker")], device="cuda:0")
    try:
        with e.lease("tiny") as lease:
            lease.synthesize("a longer sentence makes activations " * 20)
        e.offload("tiny")
        s = e._slots["tiny"]
        assert s.workspace_bytes > 0
        from tts_contract import Verb

        assert e._verbs.budget.needed(s, Verb.RESTORE) == s.known_bytes + s.workspace_bytes
    finally:
        e.shutdown(drain_timeout=5)


def test_hibari_runs_on_the_cuda_provider() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("CPU onnxruntime here; the runtime image has onnxruntime-gpu")
    e = Engine([ModelSpec(name="hibari", policy={"offloadAfterUse": False})], device="cuda:0")
    try:
        rep = e.load("hibari")
        assert rep.device == "cuda:0" and rep.error is None, rep.error
        with e.lease("hibari") as lease:
            before = lease.synthesize("On the GPU.").samples
        e.offload("hibari")
        e.restore("hibari")  # from the graph cached for the CUDA provider
        with e.lease("hibari") as lease:
            assert lease.synthesize("On the GPU.").samples.tobytes() == before.tobytes()
    finally:
        e.shutdown(drain_timeout=5)


def test_suspend_holds_no_gpu_memory_and_resumes_the_same_worker() -> None:
    from tts_runtime.engine.cuda_checkpoint import CheckpointHelper

    helper = CheckpointHelper()
    got = helper.probe()
    if not got.supported:
        helper.close()
        pytest.skip(f"CUDA checkpoint not supported here: {got.reason}")
    probe = NvmlProbe()
    e = Engine([spec("suspend")], device="cuda:0", gpu=probe, checkpoint=helper)
    try:
        assert e._slots["tiny"].cpu_mode == "suspend"
        with e.lease("tiny") as lease:
            before = lease.synthesize("checkpointed").samples
        nvml_pid = e._slots["tiny"].stats.gpu_pids  # type: ignore[union-attr]
        pid = e.pids()[1:]
        e.offload("tiny")
        settle(lambda: (probe.process_bytes(nvml_pid or pid) or 0) == 0)  # context included
        assert e.model_report("tiny").state == State.CPU and e.pids()[1:] == pid
        with e.lease("tiny") as lease:
            assert lease.synthesize("checkpointed").samples.tobytes() == before.tobytes()
        assert e.pids()[1:] == pid
    finally:
        e.shutdown(drain_timeout=5)
