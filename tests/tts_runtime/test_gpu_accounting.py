"""VRAM reported right inside a pod without hostPID: NVML lists host PIDs, the worker finds its own."""

from __future__ import annotations

import os

import pytest

from support.fake_nvml import FakeNvml
from tts_contract import ModelSpec, Policy, State
from tts_runtime.engine import NvmlProbe
from tts_runtime.engine.backends import Stats
from tts_runtime.engine.gpu import identify_self
from tts_runtime.engine.reporting import gpu_pids, model_report
from tts_runtime.engine.slot import Slot

GIB = 1 << 30
HOST_PID = 4_182_733  # how the host numbers our worker; inside the pod it is a small number
PEER = 3_990_001  # another pod's process on the same GPU


@pytest.fixture(autouse=True)
def visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_the_worker_finds_its_host_pid_as_the_process_its_context_added() -> None:
    nv = FakeNvml(procs={PEER: 3 * GIB})
    probe = NvmlProbe(nvml=nv)

    def create() -> int:
        nv.procs[HOST_PID] = 500 << 20  # the driver lists the new context under the host's PID
        return nv.free()

    me = identify_self(probe, create)
    assert me.pids == [HOST_PID] and me.context_bytes == 500 << 20
    assert probe.process_bytes([os.getpid()]) == 0  # what matching our own PID gave before: nothing


def test_same_pid_namespace_is_recognised_directly() -> None:
    nv = FakeNvml(procs={PEER: GIB})

    def create() -> int:
        nv.procs[os.getpid()] = 400 << 20
        nv.procs[HOST_PID] = 1  # someone else started at the same moment: our own PID still decides
        return nv.free()

    assert identify_self(NvmlProbe(nvml=nv), create).pids == [os.getpid()]


def test_two_processes_starting_together_are_ambiguous_and_the_context_comes_from_free_memory() -> None:
    nv = FakeNvml(procs={PEER: GIB})

    def create() -> int:
        nv.procs[HOST_PID] = 500 << 20
        nv.procs[HOST_PID + 1] = 700 << 20
        return nv.free()

    me = identify_self(NvmlProbe(nvml=nv), create, settle_seconds=0)
    assert me.pids == [] and me.context_bytes == 1200 << 20  # the drop in free memory (an upper bound)


def test_without_nvml_nothing_is_identified() -> None:
    created: list[bool] = []
    me = identify_self(None, lambda: created.append(True) or None)
    assert created == [True] and me.pids == [] and me.context_bytes == 0


class _Executor:
    """The engine's view of a worker of its own: only its PID inside the pod matters here."""

    shares_process = False

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        return [self.pid]


def slot_with(stats: Stats, state: State = State.CPU) -> Slot:
    spec = ModelSpec(name="m", backend="torch", factory="support.tiny:factory")
    slot = Slot(spec=spec, device="cuda:0", cpu_mode="keep-worker", policy=Policy(), voices=[])
    slot.state, slot.stats, slot.executor = state, stats, _Executor(41)  # type: ignore[assignment]
    return slot


def test_a_keep_worker_model_in_cpu_reports_its_context_through_nvml_host_pids() -> None:
    context = 520 << 20
    nv = FakeNvml(procs={PEER: 3 * GIB, HOST_PID: context})
    stats = Stats(device="cuda:0", vram_bytes=0, host_bytes=GIB, gpu_pids=[HOST_PID])
    report = model_report(slot_with(stats), 0.0, NvmlProbe(nvml=nv))
    assert report.vram_bytes == context  # not ~0 (memory_reserved after offload), not the peer's bytes
    slot = slot_with(stats)
    probe = NvmlProbe(nvml=nv)
    gpu = probe.report(gpu_pids([slot]))
    assert gpu is not None and gpu.process_bytes == context


def test_an_unidentified_worker_reports_what_it_measures_itself() -> None:
    nv = FakeNvml(procs={PEER: 3 * GIB, HOST_PID: 520 << 20})
    # The worker could not tell its PID: allocator (0 after offload) + the context it measured.
    stats = Stats(device="cuda:0", vram_bytes=510 << 20, context_bytes=510 << 20, host_bytes=GIB)
    report = model_report(slot_with(stats), 0.0, NvmlProbe(nvml=nv))
    assert report.vram_bytes == 510 << 20


def test_the_probe_reads_the_nth_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-other,GPU-fake-0")
    assert NvmlProbe(1, nvml=FakeNvml()).available()  # a worker on cuda:1
    assert not NvmlProbe(0, nvml=FakeNvml()).available()  # NVML has no GPU-other
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not NvmlProbe(0, nvml=FakeNvml()).available()


def test_the_pods_share_counts_an_offloaded_workers_context_by_its_host_pid() -> None:
    from support.clock import ManualClock
    from tts_runtime.engine.budget import GpuBudget

    context = 520 << 20
    nv = FakeNvml(procs={PEER: 3 * GIB, HOST_PID: context})
    slot = slot_with(Stats(device="cuda:0", host_bytes=GIB, gpu_pids=[HOST_PID]))
    budget = GpuBudget({"m": slot}, NvmlProbe(nvml=nv), ManualClock(), 0.0, memory_budget_bytes=4 * GIB)
    assert budget.held_bytes() == context  # not 0 (the pod PID), not the peer pod's 3 GiB
