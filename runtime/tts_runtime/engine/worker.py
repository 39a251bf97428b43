"""A model in its own process: the worker loop, and `WorkerExecutor`, the engine's proxy to it.

The worker is started with the *spawn* method (never fork a process that may hold CUDA) and executes
one request at a time, received over a pipe. Ending it is what returns every byte of GPU memory,
CUDA context included. In `exit-worker` mode the host copy moves into a shared-memory block that the
engine owns, the worker exits on offload, and restore starts a new worker that maps the block.
"""

from __future__ import annotations

import contextlib
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


def worker_main(conn: Connection, spec_json: str, device: str, adopt: tuple[str, Layout] | None) -> None:
    """The worker process: serve memory verbs and requests until told to exit or the engine goes away."""
    # Ctrl-C reaches the whole process group; the engine, not the signal, decides when a worker ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Before torch or onnxruntime starts CUDA: number GPUs as NVML does (the engine's accounting).
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    spec = ModelSpec.model_validate_json(spec_json)
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
        self.stats = Stats(device=device)
        self._ctx = mp.get_context("spawn")
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None
        self._shm_name = f"tts-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._shm: SharedMemory | None = None
        self._layout: Layout | None = None

    def pids(self) -> list[int]:
        p = self._proc
        return [p.pid] if p is not None and p.pid is not None else []

    def _spawn(self, adopt: tuple[str, Layout] | None) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=worker_main,
            args=(child, self.spec.model_dump_json(), self.device, adopt),
            name=f"tts-worker-{self.spec.name}",
            daemon=False,  # reaped explicitly by close(); a daemon could not start its own helpers
        )
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent

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
        self.stats = replace(self.stats, vram_bytes=0)
        return self.stats

    def restore(self, timeout: float) -> Stats:
        if self._proc is None and self._shm is not None and self._layout is not None:
            self._spawn((self._shm_name, self._layout))
        try:
            self.stats = self._call("restore", timeout=timeout)
        except BaseException:
            if self.exit_on_offload and self._shm is not None:
                # The model stays `cpu`, and in this mode `cpu` holds no process and no CUDA context.
                self._stop_worker()
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
