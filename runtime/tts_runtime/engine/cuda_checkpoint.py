"""Suspending a worker with NVIDIA's CUDA checkpoint API: 0 bytes of GPU memory, the process kept warm.

`cuCheckpointProcessLock/Checkpoint/Restore/Unlock` (libcuda, driver ≥ 570, CUDA 12.8) move every byte a
process holds on the GPU to host memory and release its GPU resources, context included; restore puts
them back at the same addresses (CUDA graphs and loaded kernels survive). The calls are made on another
process's PID, so the engine drives them from one persistent helper process (`CheckpointHelper`) and never
loads libcuda itself. `Suspender` is the state machine of one worker; every driver failure has a defined
outcome:

- lock times out (a CUDA call in flight) or checkpoint fails: unlocked again, still running on the GPU:
  `SuspendRefused`, and the caller offloads the ordinary way;
- restore or unlock fails: the worker's GPU state is lost: `ResumeFailed`, and the caller ends the
  worker (the model becomes `unloaded`, loaded again on the next request);
- a worker that was restored is checkpointed again before it is killed (`before_kill`);
- only where the probe proved it: one visible GPU, a driver with the API, a real round trip on a
  throwaway process; never with unified (managed) memory, which the API does not move.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from enum import IntEnum
from multiprocessing.connection import Connection
from typing import Any, Protocol

log = logging.getLogger(__name__)

MIN_CUDA_DRIVER = 12080  # cuDriverGetVersion of the r570 drivers that brought the checkpoint API
CUDA_SUCCESS = 0
CUDA_ERROR_TIMEOUT = 909
LOCK_TIMEOUT_MS = 5000


class ProcessState(IntEnum):
    """CUprocessState."""

    RUNNING = 0
    LOCKED = 1
    CHECKPOINTED = 2
    FAILED = 3


class SuspendRefused(Exception):
    """The worker could not be suspended and still runs on the GPU: offload it the ordinary way."""


class ResumeFailed(Exception):
    """The worker's GPU state could not be brought back: end the worker (the model is `unloaded`)."""


class DriverApi(Protocol):
    """The checkpoint calls on a PID; each returns a CUresult (0 = success)."""

    def lock(self, pid: int, timeout_ms: int) -> int: ...

    def checkpoint(self, pid: int) -> int: ...

    def restore(self, pid: int) -> int: ...

    def unlock(self, pid: int) -> int: ...

    def state(self, pid: int) -> tuple[int, ProcessState | None]: ...


class _LockArgs(ctypes.Structure):
    _fields_ = [
        ("timeoutMs", ctypes.c_uint),
        ("reserved0", ctypes.c_uint),
        ("reserved1", ctypes.c_uint64 * 7),
    ]


class _Reserved(ctypes.Structure):
    # Checkpoint/Restore/Unlock args: all reserved (zero) for a single-GPU restore in place.
    _fields_ = [("reserved", ctypes.c_uint64 * 8)]


class LibCuda:
    """The driver API through ctypes on libcuda (only ever loaded in the helper process)."""

    def __init__(self, path: str = "libcuda.so.1") -> None:
        self.lib = ctypes.CDLL(path)
        self.missing = [
            name
            for name in (
                "cuCheckpointProcessLock",
                "cuCheckpointProcessCheckpoint",
                "cuCheckpointProcessRestore",
                "cuCheckpointProcessUnlock",
                "cuCheckpointProcessGetState",
            )
            if not hasattr(self.lib, name)
        ]
        self.init_result = int(self.lib.cuInit(0))  # no context: the helper holds no GPU memory

    def driver_version(self) -> int:
        v = ctypes.c_int(0)
        return v.value if self.lib.cuDriverGetVersion(ctypes.byref(v)) == CUDA_SUCCESS else 0

    def device_count(self) -> int:
        n = ctypes.c_int(0)
        return n.value if self.lib.cuDeviceGetCount(ctypes.byref(n)) == CUDA_SUCCESS else 0

    def lock(self, pid: int, timeout_ms: int) -> int:
        args = _LockArgs(timeoutMs=timeout_ms)
        return int(self.lib.cuCheckpointProcessLock(ctypes.c_int(pid), ctypes.byref(args)))

    def checkpoint(self, pid: int) -> int:
        return int(self.lib.cuCheckpointProcessCheckpoint(ctypes.c_int(pid), ctypes.byref(_Reserved())))

    def restore(self, pid: int) -> int:
        return int(self.lib.cuCheckpointProcessRestore(ctypes.c_int(pid), ctypes.byref(_Reserved())))

    def unlock(self, pid: int) -> int:
        return int(self.lib.cuCheckpointProcessUnlock(ctypes.c_int(pid), ctypes.byref(_Reserved())))

    def state(self, pid: int) -> tuple[int, ProcessState | None]:
        s = ctypes.c_int(-1)
        rc = int(self.lib.cuCheckpointProcessGetState(ctypes.c_int(pid), ctypes.byref(s)))
        return rc, (ProcessState(s.value) if rc == CUDA_SUCCESS and s.value in (0, 1, 2, 3) else None)


@dataclass
class Probe:
    supported: bool
    reason: str
    driver_version: int = 0


def managed_memory_requested(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Unified memory the checkpoint would not move: torch's allocator asked to use it."""
    conf = ",".join(env.get(k, "") for k in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"))
    return "use_uvm" in conf.replace(" ", "") or env.get("CUDA_MANAGED_FORCE_DEVICE_ALLOC") == "1"


# A throwaway process with a context and 1 MiB on the GPU, for the probe's real round trip (ctypes only).
_PROBE_CHILD = r"""
import ctypes, sys
cu = ctypes.CDLL("libcuda.so.1")
dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
ok = cu.cuInit(0) == 0 and cu.cuDeviceGet(ctypes.byref(dev), 0) == 0
ok = ok and cu.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev) == 0
ok = ok and cu.cuMemAlloc_v2(ctypes.byref(ptr), 1 << 20) == 0
print("ready" if ok else "failed", flush=True)
sys.stdin.readline()
print("alive" if cu.cuMemFree_v2(ptr) == 0 else "broken", flush=True)
"""


def probe(api: Any, spawn_child: bool = True) -> Probe:
    """Does this host support suspending workers? Proven by a round trip, not assumed from a version."""
    missing = getattr(api, "missing", [])
    if missing:
        return Probe(False, f"libcuda has no {', '.join(missing)} (driver older than 570)")
    version = int(api.driver_version())
    if version < MIN_CUDA_DRIVER:
        why = f"driver supports CUDA {version}; the checkpoint API needs ≥ {MIN_CUDA_DRIVER}"
        return Probe(False, why, version)
    if api.device_count() != 1:
        return Probe(False, "more than one GPU visible: suspend is single-GPU only", version)
    if managed_memory_requested():
        return Probe(False, "unified (managed) memory is enabled: the checkpoint does not move it", version)
    if not spawn_child:
        return Probe(True, "driver API present", version)
    child = subprocess.Popen(
        [sys.executable, "-c", _PROBE_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        if child.stdout.readline().strip() != "ready":
            return Probe(False, "a test process could not create a CUDA context", version)
        s = Suspender(api, child.pid)
        try:
            s.suspend()
            s.resume()
        except (SuspendRefused, ResumeFailed) as e:
            return Probe(False, f"round trip on a test process failed: {e}", version)
        child.stdin.write("\n")
        child.stdin.flush()
        if child.stdout.readline().strip() != "alive":
            return Probe(False, "a test process restored from a checkpoint lost its GPU memory", version)
        return Probe(True, "round trip on a test process succeeded", version)
    finally:
        with contextlib.suppress(Exception):
            child.kill()
        child.wait(10)


class Suspender:
    """The checkpoint state machine of one worker process (see the module docstring for the outcomes)."""

    def __init__(self, api: DriverApi, pid: int, lock_timeout_ms: int = LOCK_TIMEOUT_MS) -> None:
        self.api = api
        self.pid = pid
        self.lock_timeout_ms = lock_timeout_ms
        self.suspended = False
        self.restored_once = False

    def suspend(self) -> None:
        if self.suspended:
            return
        rc = self.api.lock(self.pid, self.lock_timeout_ms)
        if rc != CUDA_SUCCESS:
            why = "timed out (a CUDA call in flight)" if rc == CUDA_ERROR_TIMEOUT else f"failed ({rc})"
            raise SuspendRefused(f"cuCheckpointProcessLock of {self.pid} {why}")
        rc = self.api.checkpoint(self.pid)
        if rc != CUDA_SUCCESS:
            # Still on the GPU and locked: let it run again, unchanged.
            unlocked = self.api.unlock(self.pid)
            if unlocked != CUDA_SUCCESS:
                raise ResumeFailed(f"checkpoint of {self.pid} failed ({rc}) and unlock failed ({unlocked})")
            raise SuspendRefused(f"cuCheckpointProcessCheckpoint of {self.pid} failed ({rc})")
        self.suspended = True

    def resume(self) -> None:
        if not self.suspended:
            return
        rc = self.api.restore(self.pid)
        if rc != CUDA_SUCCESS:
            raise ResumeFailed(f"cuCheckpointProcessRestore of {self.pid} failed ({rc})")
        rc = self.api.unlock(self.pid)
        if rc != CUDA_SUCCESS:
            raise ResumeFailed(f"cuCheckpointProcessUnlock of {self.pid} failed ({rc})")
        self.suspended = False
        self.restored_once = True

    def before_kill(self) -> None:
        """A worker restored from a checkpoint is checkpointed again before it is killed (what the
        driver needs to release its restored allocations cleanly); failures are logged, the kill goes on."""
        if self.suspended or not self.restored_once:
            return
        try:
            self.suspend()
        except (SuspendRefused, ResumeFailed) as e:
            log.warning("re-checkpoint of worker %d before ending it failed: %s", self.pid, e)


# -- the persistent helper: one process per engine, the only one that loads libcuda -----------------
def _helper_main(conn: Connection) -> None:
    api: Any = None
    machines: dict[int, Suspender] = {}
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if op == "probe":
                try:
                    api = LibCuda()
                except OSError as e:
                    conn.send(("ok", Probe(False, f"no libcuda: {e}")))
                    continue
                conn.send(("ok", probe(api)))
                continue
            if api is None:
                raise RuntimeError("the checkpoint helper was not probed")
            pid = int(args[0])
            m = machines.setdefault(pid, Suspender(api, pid))
            if op == "suspend":
                m.suspend()
            elif op == "resume":
                m.resume()
            elif op == "before_kill":
                m.before_kill()
                machines.pop(pid, None)
            else:
                raise ValueError(f"unknown checkpoint op {op!r}")
            conn.send(("ok", None))
        except SuspendRefused as e:
            conn.send(("refused", str(e)))
        except ResumeFailed as e:
            conn.send(("failed", str(e)))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}"))


class CheckpointHelper:
    """The engine's handle on the persistent helper process (started once, on first use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None
        self.probed: Probe | None = None

    def _call(self, op: str, *args: Any) -> Any:
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                ctx = mp.get_context("spawn")
                self._conn, child = ctx.Pipe()
                self._proc = ctx.Process(
                    target=_helper_main, args=(child,), name="tts-checkpoint", daemon=True
                )
                self._proc.start()
                child.close()
                if op != "probe" and self.probed is not None:
                    self._conn.send(("probe", ()))  # a restarted helper loads libcuda again
                    self._conn.recv()
            assert self._conn is not None
            self._conn.send((op, args))
            kind, value = self._conn.recv()
        if kind == "refused":
            raise SuspendRefused(value)
        if kind == "failed":
            raise ResumeFailed(value)
        if kind != "ok":
            raise RuntimeError(value)
        return value

    def probe(self) -> Probe:
        if self.probed is None:
            self.probed = self._call("probe")
        return self.probed

    def suspend(self, pid: int) -> None:
        self._call("suspend", pid)

    def resume(self, pid: int) -> None:
        self._call("resume", pid)

    def before_kill(self, pid: int) -> None:
        self._call("before_kill", pid)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            if self._proc is not None:
                self._proc.join(5)
                if self._proc.is_alive():
                    self._proc.kill()
            self._proc = self._conn = None
