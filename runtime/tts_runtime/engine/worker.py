"""A model in its own process: the worker loop, and `WorkerExecutor`, the engine's proxy to it.

The worker is started with the *spawn* method (never fork a process that may hold CUDA) and executes
one request at a time, received over a pipe. Ending it is what returns every byte of GPU memory,
CUDA context included. In `exit-worker` mode the host copy moves into a shared-memory block that the
engine owns, the worker exits on offload, and restore starts a new worker that maps the block. A
warm *standby* (imports done, no CUDA, nothing mapped) waits for that restore, so it skips the spawn.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from tts_runtime.engine.backends import Blob, GpuOutOfMemory, Stats, make_backend
from tts_runtime.engine.executor import ExecutionTimeout
from tts_runtime.engine.spec import ModelSpec
from tts_runtime.residency import InvalidRequestError, WorkerCrashedError

log = logging.getLogger(__name__)
_ALIGN = 64
Layout = list[tuple[str, dict[str, Any], int, int]]  # key, meta, offset, nbytes


# -- inside the worker -----------------------------------------------------------------------------
def _export(backend: Any, shm_name: str) -> Layout:
    blobs: list[Blob] = backend.host_blobs()
    layout: Layout = []
    offset = 0
    for b in blobs:
        layout.append((b.key, b.meta, offset, b.data.nbytes))
        offset += (b.data.nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
    shm = SharedMemory(name=shm_name, create=True, size=max(offset, 1))
    buf = shm.buf
    assert buf is not None
    try:
        for b, (_, _, off, n) in zip(blobs, layout, strict=True):
            buf[off : off + n] = b.data.cast("B")
    finally:
        shm.close()
    return layout


def _blobs(shm: SharedMemory, layout: Layout) -> list[Blob]:
    buf = shm.buf
    assert buf is not None
    return [Blob(key, meta, buf[off : off + n]) for key, meta, off, n in layout]


def _preimport(spec: ModelSpec) -> None:
    """Import what building the backend will need, touching no device (the standby's whole job)."""
    try:
        if spec.backend == "hibari":
            importlib.import_module("tts_runtime.engine.hibari_backend")
            return
        torch = importlib.import_module("torch")
        importlib.import_module("tts_runtime.engine.torch_backend")
        if spec.factory:
            importlib.import_module(spec.factory.partition(":")[0])
        # The first parameter init on the meta device (how restore builds the skeleton) lazily imports
        # torch._refs/_prims, ~1 s: pay it here. Meta tensors have no storage and touch no device.
        with torch.device("meta"):
            nn = torch.nn
            nn.Sequential(nn.Embedding(2, 2), nn.Linear(2, 2), nn.Conv1d(2, 2, 1), nn.LayerNorm(2))
    except Exception:  # the restore that uses this standby reports the same error, with its context
        log.debug("standby pre-import of %s failed", spec.name, exc_info=True)


def _standby_status() -> dict[str, Any]:
    torch = sys.modules.get("torch")
    cuda = bool(torch is not None and torch.cuda.is_initialized())
    return {"pid": os.getpid(), "cuda_initialized": cuda, "modules": sorted(sys.modules)}


def _wait_as_standby(conn: Connection, spec: ModelSpec) -> tuple[str, Layout] | None:
    """Pre-import, then wait for the shared block to adopt; None: told to exit, or the engine went away."""
    _preimport(spec)
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            return None
        if op == "adopt":
            conn.send(("ok", None))
            return args[0]  # type: ignore[no-any-return]
        if op == "exit":
            conn.send(("ok", None))
            return None
        if op == "status":
            conn.send(("ok", _standby_status()))
        else:
            conn.send(("error", f"a standby worker takes adopt, status or exit, not {op!r}"))


def worker_main(
    conn: Connection, spec_json: str, device: str, adopt: tuple[str, Layout] | None, standby: bool = False
) -> None:
    """The worker process: serve memory verbs and requests until told to exit or the engine goes away."""
    # Ctrl-C reaches the whole process group; the engine, not the signal, decides when a worker ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Before torch or onnxruntime starts CUDA: number GPUs as NVML does (the engine's accounting).
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    spec = ModelSpec.model_validate_json(spec_json)
    if standby:
        adopt = _wait_as_standby(conn, spec)
        if adopt is None:
            os._exit(0)
    backend = make_backend(spec, device)
    shm: SharedMemory | None = None
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            break  # the engine died or closed the pipe: nothing left to serve
        try:
            if op == "exit":
                conn.send(("ok", None))
                break
            result: Any
            if op == "load":
                backend.load()
                result = backend.stats()
            elif op == "restore":
                if adopt is not None:
                    shm = SharedMemory(name=adopt[0])
                    backend.adopt_host(_blobs(shm, adopt[1]))
                    adopt = None
                backend.restore()
                result = backend.stats()
            elif op == "offload":
                backend.offload()
                result = backend.stats()
            elif op == "synthesize":
                result = backend.synthesize(*args)
            elif op == "export":
                result = _export(backend, args[0])
            elif op == "stats":
                result = backend.stats()
            else:
                raise ValueError(f"unknown worker op {op!r}")
            conn.send(("ok", result))
        except GpuOutOfMemory as e:
            conn.send(("oom", str(e)))
        except InvalidRequestError as e:
            conn.send(("invalid", str(e)))
        except Exception as e:
            tb = traceback.format_exc(limit=-3)
            conn.send(("error", f"{type(e).__name__}: {e}\n{tb}"))
    backend.close()
    # Drop tensor views into the shared block before closing it, or close() fails on exported buffers.
    del backend
    if shm is not None:
        with contextlib.suppress(BufferError):
            shm.close()
    # Skip interpreter teardown (torch's takes a second or more): the OS frees memory and CUDA on exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# -- in the engine ---------------------------------------------------------------------------------
class WorkerExecutor:
    """Thread-safe proxy to one model's worker process."""

    def __init__(self, spec: ModelSpec, device: str, cpu_mode: str) -> None:
        self.spec = spec
        self.device = device
        self.exit_on_offload = cpu_mode == "exit-worker"
        self.use_standby = self.exit_on_offload and spec.standby_worker
        self.stats = Stats(device=device)
        self._ctx = mp.get_context("spawn")
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None
        self._shm_name = f"tts-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._shm: SharedMemory | None = None
        self._layout: Layout | None = None
        self._standby: tuple[Any, Connection] | None = None

    def pids(self) -> list[int]:
        """The serving worker: the only process of this model that can hold GPU memory."""
        p = self._proc
        return [p.pid] if p is not None and p.pid is not None else []

    def standby_pid(self) -> int | None:
        """The warm standby while `cpu` in exit-worker mode (never initialises CUDA: not in `pids()`)."""
        s = self._standby
        return s[0].pid if s is not None else None

    def standby_status(self, timeout: float = 30.0) -> dict[str, Any]:
        """What the standby has imported and whether CUDA is initialised in it (for tests and debugging)."""
        s = self._standby
        if s is None:
            raise WorkerCrashedError(f"model {self.spec.name!r} has no standby worker")
        with self._lock:
            s[1].send(("status", ()))
            if not s[1].poll(timeout):
                raise ExecutionTimeout(f"the standby of {self.spec.name!r} did not answer in {timeout:g}s")
            kind, value = s[1].recv()
        if kind != "ok":
            raise RuntimeError(value)
        return value  # type: ignore[no-any-return]

    def _start(self, adopt: tuple[str, Layout] | None, standby: bool, role: str) -> tuple[Any, Connection]:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=worker_main,
            args=(child, self.spec.model_dump_json(), self.device, adopt, standby),
            name=f"tts-{role}-{self.spec.name}",
            daemon=False,  # reaped explicitly by close(); a daemon could not start its own helpers
        )
        proc.start()
        child.close()
        return proc, parent

    def _spawn(self, adopt: tuple[str, Layout] | None) -> None:
        self._proc, self._conn = self._start(adopt, False, "worker")

    def _spawn_standby(self) -> None:
        # Only while `cpu` (the block exists, no worker): a standby costs host RAM, so at most one.
        if self.use_standby and self._standby is None and self._proc is None and self._shm is not None:
            self._standby = self._start(None, True, "standby")

    def _adopt_standby(self, timeout: float) -> bool:
        """Make the standby the worker, handing it the block; False if there is none or it died."""
        s, self._standby = self._standby, None
        if s is None:
            return False
        self._proc, self._conn = s
        try:
            # It may still be importing (a restore right after offload): that wait is the cold spawn's too.
            self._call_locked("adopt", ((self._shm_name, self._layout),), timeout)
        except WorkerCrashedError:
            log.info("the standby worker of %s had exited; starting a worker cold", self.spec.name)
            return False
        return True

    def _stop_standby(self) -> None:
        # It holds nothing yet (no CUDA, no block mapped): killing it loses nothing, never waits on imports.
        s, self._standby = self._standby, None
        if s is None:
            return
        proc, conn = s
        if proc.is_alive():
            proc.kill()
        proc.join(10.0)
        with contextlib.suppress(ValueError):
            proc.close()
        conn.close()

    def _call(self, op: str, *args: Any, timeout: float | None) -> Any:
        with self._lock:
            return self._call_locked(op, args, timeout)

    def _call_locked(self, op: str, args: tuple[Any, ...], timeout: float | None) -> Any:
        proc, conn = self._proc, self._conn
        if proc is None or conn is None:
            raise WorkerCrashedError(f"model {self.spec.name!r} has no worker process (it was released)")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            conn.send((op, args))
            while not conn.poll(0.05):
                if not proc.is_alive() and not conn.poll(0):
                    raise EOFError
                if deadline is not None and time.monotonic() > deadline:
                    self._kill()
                    raise ExecutionTimeout(
                        f"{op} of model {self.spec.name!r} ran past {timeout:g}s; its worker was stopped"
                    )
            kind, value = conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            code = self._reap()
            raise WorkerCrashedError(
                f"the worker process of model {self.spec.name!r} exited (code {code}) during {op}; "
                "the model was unloaded and loads again on the next request"
            ) from None
        if kind == "ok":
            return value
        if kind == "oom":
            raise GpuOutOfMemory(value)
        if kind == "invalid":
            raise InvalidRequestError(value)
        raise RuntimeError(value)

    def load(self, timeout: float) -> Stats:
        self._spawn(None)
        try:
            self.stats = self._call("load", timeout=timeout)
        except BaseException:
            self.close()
            raise
        return self.stats

    def offload(self) -> Stats:
        if not self.exit_on_offload:
            self.stats = self._call("offload", timeout=60.0)
            return self.stats
        with self._lock:
            if self._shm is None:
                self._layout = self._call_locked("export", (self._shm_name,), 120.0)
                self._shm = SharedMemory(name=self._shm_name)
            self._call_locked("exit", (), 30.0)
            self._reap()
            self._spawn_standby()
        self.stats = replace(self.stats, vram_bytes=0)
        return self.stats

    def restore(self, timeout: float) -> Stats:
        deadline = time.monotonic() + timeout
        try:
            if self._proc is None and self._shm is not None and self._layout is not None:
                with self._lock:
                    if not self._adopt_standby(timeout):
                        self._spawn((self._shm_name, self._layout))
            self.stats = self._call("restore", timeout=max(deadline - time.monotonic(), 0.001))
        except BaseException:
            if self.exit_on_offload and self._shm is not None:
                # The model stays `cpu`, and in this mode `cpu` holds no CUDA context (only a standby).
                self._stop_worker()
                self._spawn_standby()
                self.stats = replace(self.stats, vram_bytes=0)
            raise
        return self.stats

    def synthesize(
        self, text: str, voice: str | None, speed: float, timeout: float | None
    ) -> tuple[np.ndarray, int]:
        samples, sr = self._call("synthesize", text, voice, speed, timeout=timeout)
        return samples, sr

    def host_intact(self) -> bool:
        if self._shm is not None:
            return True
        p = self._proc
        return p is not None and p.is_alive()

    def _kill(self) -> None:
        p = self._proc
        if p is not None and p.is_alive():
            p.kill()
        self._reap()

    def _reap(self) -> int | None:
        p, conn = self._proc, self._conn
        self._proc, self._conn = None, None
        code = None
        if p is not None:
            p.join(10.0)
            if p.is_alive():
                p.kill()
                p.join(5.0)
            code = p.exitcode
            with contextlib.suppress(ValueError):
                p.close()
        if conn is not None:
            conn.close()
        return code

    def _stop_worker(self) -> None:
        # Ask politely (the worker frees CUDA and shared memory itself), then make sure.
        if self._proc is not None and self._lock.acquire(timeout=5.0):
            try:
                if self._proc is not None and self._proc.is_alive() and self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.send(("exit", ()))
                        if self._conn.poll(5.0):
                            self._conn.recv()
            finally:
                self._lock.release()
        self._kill()

    def close(self) -> None:
        self._stop_standby()
        self._stop_worker()
        if self._shm is not None:
            self._shm.close()
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()
            self._shm, self._layout = None, None
        else:
            # A worker may have created the block and died before we attached: unlink it by name.
            with contextlib.suppress(FileNotFoundError, OSError):
                orphan = SharedMemory(name=self._shm_name)
                orphan.close()
                orphan.unlink()
        self.stats = Stats(device=self.stats.device)
