"""The `suspend` cpuMode: a worker whose offload is a CUDA checkpoint (0 GPU bytes, the process kept warm).

Offload asks the engine's checkpoint helper to lock and checkpoint the worker: the driver moves every byte
it holds on the GPU, context included, to host memory. Restore brings them back at the same addresses
(nothing to copy from our host arena, CUDA graphs survive). Failures (cuda_checkpoint's docstring): a
refused suspend falls back to the ordinary keep-worker offload; a failed resume ends the worker, and the
model is `unloaded` (loaded again on the next request); a worker that was resumed is checkpointed again
before it is killed.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Protocol

from tts_contract import ModelSpec
from tts_runtime.engine.backends import Stats
from tts_runtime.engine.cuda_checkpoint import Probe, ResumeFailed, SuspendRefused
from tts_runtime.engine.errors import WorkerCrashedError
from tts_runtime.engine.worker import WorkerExecutor

log = logging.getLogger(__name__)


class Checkpointer(Protocol):
    """What the engine's persistent helper (`CheckpointHelper`) does for it."""

    def probe(self) -> Probe: ...

    def suspend(self, pid: int) -> None: ...

    def resume(self, pid: int) -> None: ...

    def before_kill(self, pid: int) -> None: ...

    def close(self) -> None: ...


class SuspendingExecutor(WorkerExecutor):
    def __init__(self, spec: ModelSpec, device: str, helper: Checkpointer) -> None:
        super().__init__(spec, device, "keep-worker")
        self.helper = helper
        self.suspended = False  # checkpointed by the driver (else: on the GPU, or offloaded the usual way)
        self.resumed = False  # came back from a checkpoint at least once: re-checkpoint before a kill

    def _pid(self) -> int:
        pids = self.pids()
        if not pids:
            raise WorkerCrashedError(f"model {self.spec.name!r} has no worker process (it was released)")
        return pids[0]

    def offload(self) -> Stats:
        with self._lock:
            pid = self._pid()
            try:
                self.helper.suspend(pid)
            except SuspendRefused as e:
                log.warning("%s: suspend refused (%s); offloading the ordinary way", self.spec.name, e)
                self.stats = self._call("offload", (), 60.0)
                return self.stats
            self.suspended = True
            self.stats = replace(self.stats, vram_bytes=0)
            return self.stats

    def restore(self, timeout: float) -> Stats:
        with self._lock:
            if not self.suspended:
                self.stats = self._call("restore", (), timeout)
                return self.stats
            pid = self._pid()
            try:
                self.helper.resume(pid)
            except ResumeFailed as e:
                # Nothing left to re-checkpoint: the driver has it in a failed state.
                self.suspended = self.resumed = False
                self._close_locked()  # its GPU state is gone: nothing of it can serve again
                raise WorkerCrashedError(
                    f"model {self.spec.name!r} could not be resumed from its CUDA checkpoint ({e}); the "
                    "worker was ended and the model loads again on the next request"
                ) from None
            self.suspended, self.resumed = False, True
            self.stats = self._call("stats", (), timeout)
            return self.stats

    def host_intact(self) -> bool:
        c = self._chan
        return c is not None and c.alive()

    def _close_locked(self) -> None:
        pids = self.pids()
        if pids and self.resumed and not self.suspended:
            try:
                self.helper.before_kill(pids[0])
            except Exception as e:  # the kill goes on; the driver frees what it can
                log.warning("%s: re-checkpoint before ending the worker failed: %s", self.spec.name, e)
        super()._close_locked()


def suspend_helper(
    specs: list[ModelSpec], cuda: bool, helper: Checkpointer | None
) -> tuple[Checkpointer | None, str | None]:
    """The checkpoint helper when a model asks for `suspend` and the start-up probe proves the driver
    supports it; else (None, why not). `helper` replaces the real one (tests)."""
    if not any(s.cpu_mode == "suspend" for s in specs):
        return None, None
    if helper is None:
        if not cuda:
            return None, "no GPU"
        from tts_runtime.engine.cuda_checkpoint import CheckpointHelper

        helper = CheckpointHelper()
    got = helper.probe()
    if not got.supported:
        helper.close()
        return None, got.reason
    return helper, None
