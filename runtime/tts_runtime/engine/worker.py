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
import itertools
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import queue
import sys
import threading
import time
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from tts_contract import ModelSpec
from tts_runtime.engine import blank
from tts_runtime.engine.backends import Blob, Chunks, GpuOutOfMemory, Stats, make_backend
from tts_runtime.engine.cancel import Cancel
from tts_runtime.engine.dispatch import Dispatcher, Job, Reply
from tts_runtime.engine.errors import InvalidRequestError, RequestCancelled, WorkerCrashedError
from tts_runtime.engine.executor import POLL_SECONDS, ExecutionTimeout
from tts_runtime.engine.lifecycle import (
    become_worker,
    cannot_serve,
    claim_block,
    forget_block,
    reserve,
    shm_free_bytes,
    start_process,
)
from tts_runtime.engine.tuning import roomy_pipe

log = logging.getLogger(__name__)
_ALIGN = 64
Layout = list[tuple[str, dict[str, Any], int, int]]  # key, meta, offset, nbytes
REQUEST_OPS = frozenset({"synthesize", "stream"})  # run concurrently; other ops: memory verbs, queries


# -- inside the worker -----------------------------------------------------------------------------
def _export(backend: Any, shm_name: str) -> Layout:
    blobs: list[Blob] = backend.host_blobs()
    layout: Layout = []
    offset = 0
    for b in blobs:
        layout.append((b.key, b.meta, offset, b.data.nbytes))
        offset += (b.data.nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
    shm = SharedMemory(name=shm_name, create=True, size=max(offset, 1))
    try:
        reserve(shm._fd, max(offset, 1))  # type: ignore[attr-defined]
        buf = shm.buf
        assert buf is not None
        for b, (_, _, off, n) in zip(blobs, layout, strict=True):
            buf[off : off + n] = b.data.cast("B")
    except BaseException:
        shm.close()
        shm.unlink()  # a block that could not be filled is of no use to anyone
        raise
    shm.close()
    return layout


def _blobs(shm: SharedMemory, layout: Layout) -> list[Blob]:
    buf = shm.buf
    assert buf is not None
    return [Blob(key, meta, buf[off : off + n]) for key, meta, off, n in layout]


def _prepare(spec: ModelSpec, device: str, first_load: bool = False) -> Any:
    """A standby's whole job: import what the backend needs and do its host-only work, touching no device.
    Returns the backend when it could be built ahead (hibari: G2P and vocab ready), else None."""
    _preimport(spec)
    if spec.backend != "hibari":
        return None  # a torch backend asks torch.cuda about the device when built: not in a standby
    try:
        backend: Any = make_backend(spec, device)
        backend.prepare(first_load)
        return backend
    except Exception:  # the load or restore that uses this standby builds it again and reports the error
        log.debug("standby preparation of %s failed", spec.name, exc_info=True)
        return None


def _preimport(spec: ModelSpec) -> None:
    """Import what building the backend will need, touching no device."""
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


def _standby_status(made: Any = None) -> dict[str, Any]:
    torch = sys.modules.get("torch")
    cuda = bool(torch is not None and torch.cuda.is_initialized())
    prepared = made is not None and made.backend is not None
    restored = made is not None and made.restored
    return {
        "pid": os.getpid(),
        "cuda_initialized": cuda,
        "modules": sorted(sys.modules),
        "prepared": prepared,  # the backend's host-only work is done (hibari: vocab and G2P)
        # CPU device: the whole restore (or first load) is done, the one that adopts it is free
        "restored_ahead": restored and made.block is not None,
        "loaded_ahead": restored and made.block is None,
        "warmed_up": made is not None and made.warmed_up,  # a first synthesis ran, off the request path
    }


def _outcome(e: BaseException) -> tuple[str, str]:
    """An exception in the worker -> the reply kind the engine maps back to its error type."""
    if isinstance(e, GpuOutOfMemory):
        return "oom", str(e)
    if isinstance(e, InvalidRequestError):
        return "invalid", str(e)
    if isinstance(e, RequestCancelled):
        return "cancelled", str(e)
    tb = "".join(traceback.format_exception(e, limit=-3))
    return "error", f"{type(e).__name__}: {e}\n{tb}"


class _Replies:
    """The worker's end of the pipe: replies tagged with their request id, sent from any thread."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, rid: int, kind: str, value: Any) -> None:
        # If the engine went away, the read loop sees EOF and ends the process.
        with self._lock, contextlib.suppress(OSError, ValueError):
            self.conn.send((rid, kind, value))

    def reply_for(self, rid: int) -> Reply:
        def reply(value: Any, error: BaseException | None, final: bool) -> None:
            if error is not None:
                self.send(rid, *_outcome(error))
            else:
                self.send(rid, "ok" if final else "chunk", value)

        return reply


class _Standby:
    """What a standby made ahead: the backend (or None), and on a CPU device the whole restore."""

    def __init__(self, backend: Any, block: tuple[str, Layout] | None) -> None:
        self.backend = backend
        self.block = block  # the shared block to adopt at the first restore (None: a first load)
        self.shm: SharedMemory | None = None
        # The backend already executes (from the block, or loaded): the first restore or load is free.
        self.restored = False
        self.warmed_up = False


def _ready_ahead(made: _Standby) -> None:
    """On a CPU device neither a restore nor a first load touches a device: do all of it before it is
    asked for (then `_warm_up`)."""
    block = made.block
    try:
        if block is None:
            made.backend.load()
        else:
            made.shm = SharedMemory(name=block[0])
            made.backend.adopt_host(_blobs(made.shm, block[1]))
            made.backend.restore()
        made.restored = True
    except Exception:  # the load or restore itself does it again and reports the error
        log.debug("%s ahead failed", "loading" if block is None else "restoring", exc_info=True)
        made.backend = None
        if made.shm is not None:
            with contextlib.suppress(BufferError):
                made.shm.close()
            made.shm = None


def _warm_up(made: _Standby) -> None:
    """One synthesis, so the first request does not pay a fresh session's first run (ONNX Runtime grows
    its arena and the G2P fills its caches there: ~2x a warm request)."""
    warm_up = getattr(made.backend, "warm_up", None)
    if callable(warm_up):
        try:
            warm_up()
            made.warmed_up = True
        except Exception:  # a request that fails the same way reports it
            log.debug("warm-up failed", exc_info=True)


def _wait_as_standby(
    conn: Connection, out: _Replies, spec: ModelSpec, device: str, block: tuple[str, Layout] | None
) -> _Standby | None:
    """Prepare, then wait to become the worker: `adopt` with the shared block (a restore) or None (a first
    load). None: told to exit, or the engine went away."""
    made = _Standby(_prepare(spec, device, block is None), block)
    first: Any = None  # a message that came while this got ready
    if made.backend is not None and not device.startswith("cuda"):
        _ready_ahead(made)
        with contextlib.suppress(EOFError, OSError):
            first = conn.recv() if conn.poll(0) else None
        # Not when the engine asks for this process already (a cold start's first request waits): that
        # request is the first run, and a warm-up before it would only add its own time to the wait.
        if made.restored and (first is None or first[1] != "adopt"):
            _warm_up(made)
    while True:
        try:
            rid, op, args = first if first is not None else conn.recv()
            first = None
        except (EOFError, OSError):
            return None
        if op == "adopt":
            out.send(rid, "ok", None)
            if made.restored and args[0] != made.block:  # not what it got ready for: start over
                made.restored = False
                made.backend = None
            made.block = args[0]
            return made
        if op == "exit":
            out.send(rid, "ok", None)
            return None
        if op == "status":
            out.send(rid, "ok", _standby_status(made))
        else:
            out.send(rid, "error", f"a standby worker takes adopt, status or exit, not {op!r}")


def worker_main(
    conn: Connection,
    spec_json: str,
    device: str,
    adopt: tuple[str, Layout] | None,
    standby: bool = False,
    parent_pid: int | None = None,
) -> None:
    """The worker process: serve memory verbs and requests until told to exit or the engine goes away.

    Protocol: the engine sends `(id, op, args)`; the worker answers `(id, kind, value)`, where kind is
    `chunk` (more to come) or a final `ok` / `oom` / `invalid` / `cancelled` / `error`. Requests
    (`REQUEST_OPS`) run on the dispatcher's threads, so several are in flight; any other op is a memory verb
    (or a query) run on this thread after the requests received before it have finished. `stream` answers
    a chunk per piece of audio; `cancel` (args: the request's id; no answer) stops that request between
    pieces (a `synthesize` only where the backend's stream joins to its whole clip).
    """
    become_worker(os.getppid() if parent_pid is None else parent_pid)
    # Before torch or onnxruntime starts CUDA: number GPUs as NVML does (the engine's accounting).
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    spec = ModelSpec.model_validate_json(spec_json)
    out = _Replies(conn)
    backend: Any = None
    shm: SharedMemory | None = None
    restored = False
    if standby:
        made = _wait_as_standby(conn, out, spec, device, adopt)
        if made is None:
            os._exit(0)
        backend, adopt, restored = made.backend, made.block, made.restored
        if restored:
            shm, adopt = made.shm, None
    if backend is None:
        backend = make_backend(spec, device)
    pool = Dispatcher(backend, spec.name)
    in_flight: weakref.WeakValueDictionary[int, Job] = weakref.WeakValueDictionary()  # requests, to cancel
    while True:
        try:
            rid, op, args = conn.recv()
        except (EOFError, OSError):
            break  # the engine died or closed the pipe: nothing left to serve
        if op == "cancel":
            job = in_flight.get(args[0])
            if job is not None:  # else it had ended already: nothing to stop
                job.cancel.set()
            continue
        if op in REQUEST_OPS:
            job = Job(op, tuple(args), out.reply_for(rid))
            in_flight[rid] = job
            pool.submit(job)
            continue
        try:
            result: Any = None
            if op == "stats":  # a query: no need to wait for requests
                out.send(rid, "ok", backend.stats())
                continue
            with pool.exclusive():
                if op == "exit":
                    pass
                elif op == "load":
                    if not restored:
                        backend.load()
                    restored = False
                    result = backend.stats()
                elif op == "restore":
                    if adopt is not None:
                        shm = SharedMemory(name=adopt[0])
                        backend.adopt_host(_blobs(shm, adopt[1]))
                        adopt = None
                    if not restored:
                        backend.restore()
                    restored = False
                    result = backend.stats()
                elif op == "offload":
                    backend.offload()
                    result = backend.stats()
                elif op == "export":
                    result = _export(backend, args[0])
                else:
                    raise ValueError(f"unknown worker op {op!r}")
            out.send(rid, "ok", result)
        except Exception as e:
            out.send(rid, *_outcome(e))
        if op == "exit":
            break
    pool.close()
    backend.close()
    # Drop tensor views into the shared block before closing it, or close() fails on exported buffers.
    del backend, pool
    if shm is not None:
        with contextlib.suppress(BufferError):
            shm.close()
    # Skip interpreter teardown (torch's takes a second or more): the OS frees memory and CUDA on exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# -- in the engine ---------------------------------------------------------------------------------
Inbox = queue.SimpleQueue[tuple[str, Any] | None]  # one request's replies; None: the worker is gone
_WAKE = ("wake", None)  # put in a stream's inbox by its Cancel: look at the flag now


class _Gone(Exception):
    """The worker process ended (or its pipe broke) before it answered."""


class Channel:
    """The engine's end of one worker: requests tagged with ids, replies routed to their callers by a
    reader thread, so many requests can wait on one worker at once. When the process ends, every caller
    still waiting is told (`None` on its queue)."""

    def __init__(self, proc: Any, conn: Connection, name: str) -> None:
        self.proc = proc
        self.conn = conn
        self.pid: int | None = proc.pid
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._waiting: dict[int, Inbox] = {}
        self._ids = itertools.count(1)
        self._gone = False
        self._reaped = False
        self.exitcode: int | None = None
        self.expected_end = False  # the engine asked it to exit or killed it: its end is no news
        # Called (from the reader thread) when the process ends while no request waits on it.
        self.on_idle_end: Callable[[Channel], None] | None = None
        # Called (from the reader thread) whenever the process ends (a shared worker tells every model).
        self.on_end: Callable[[Channel], None] | None = None
        self._reader = threading.Thread(target=self._read, name=f"pipe-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        sentinel = self.proc.sentinel
        try:
            while True:
                ready = mp.connection.wait([self.conn, sentinel])
                if self.conn not in ready:
                    break  # the process ended and left nothing unread
                rid, kind, value = self.conn.recv()
                with self._lock:
                    q = self._waiting.get(rid)
                    if q is not None and kind != "chunk":
                        del self._waiting[rid]
                if q is not None:
                    q.put((kind, value))
        except (EOFError, OSError, ValueError):
            pass
        with self._lock:
            self._gone = True
            waiting, self._waiting = self._waiting, {}
        for q in waiting.values():
            q.put(None)
        if not waiting and not self.expected_end and self.on_idle_end is not None:
            self.on_idle_end(self)
        if self.on_end is not None:
            self.on_end(self)

    def request(self, op: str, args: tuple[Any, ...]) -> tuple[int, Inbox]:
        q: Inbox = queue.SimpleQueue()
        with self._lock:
            if self._gone:
                raise _Gone
            rid = next(self._ids)
            self._waiting[rid] = q
        try:
            with self._send_lock:
                self.conn.send((rid, op, args))
        except (OSError, ValueError):
            self.forget(rid)
            raise _Gone from None
        return rid, q

    def notify(self, op: str, args: tuple[Any, ...]) -> None:
        """A message that gets no answer (id 0): `cancel`."""
        try:
            with self._send_lock:
                self.conn.send((0, op, args))
        except (OSError, ValueError):
            raise _Gone from None

    def forget(self, rid: int) -> None:
        with self._lock:
            self._waiting.pop(rid, None)

    def alive(self) -> bool:
        return not self._gone and self.proc.is_alive()

    def kill(self) -> None:
        self.expected_end = True
        with contextlib.suppress(ValueError, OSError):
            if self.proc.is_alive():
                self.proc.kill()

    def reap(self, timeout: float = 10.0) -> int | None:
        """Wait for the process to end (killing it after `timeout`), then free the pipe; idempotent."""
        with self._lock:
            if self._reaped:
                return self.exitcode
            self._reaped = True
        p = self.proc
        with contextlib.suppress(ValueError):
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join(5.0)
            self.exitcode = p.exitcode
        self._reader.join(5.0)
        with contextlib.suppress(ValueError):
            p.close()
        self.conn.close()
        return self.exitcode


class _Stop:
    """Tells the worker to stop one request, once; a dead worker is noticed by the caller's wait."""

    def __init__(self, chan: Channel, rid: int) -> None:
        self.chan, self.rid = chan, rid
        self.done = False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            with contextlib.suppress(_Gone):
                self.chan.notify("cancel", (self.rid,))


class WorkerExecutor:
    """Thread-safe proxy to one model's worker process: requests in flight together, verbs one at a time."""

    shares_process = False  # other models live in its process too (`workerGroup`: shared_worker.py)

    def __init__(self, spec: ModelSpec, device: str, cpu_mode: str) -> None:
        self.spec = spec
        self.device = device
        self.exit_on_offload = cpu_mode == "exit-worker"
        self.use_standby = self.exit_on_offload and spec.standby_worker
        # On a CPU in keep-worker mode the worker's host copy is what executes: offload would free nothing
        # and restore copy nothing, so neither reaches the worker (exit-worker still ends the process).
        self.moves_nothing = not self.exit_on_offload and not device.startswith("cuda")
        self.stats = Stats(device=device)
        self._ctx = mp.get_context("spawn")
        self._lock = threading.Lock()  # memory verbs and process changes, one at a time
        self._chan: Channel | None = None
        self._shm_name = f"tts-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._shm: SharedMemory | None = None
        self._layout: Layout | None = None
        self._standby: Channel | None = None
        # Told when the serving worker dies while idle (the engine unloads the model and says why).
        self.on_death: Callable[[str], None] | None = None
        claim_block(self._shm_name)

    def pids(self) -> list[int]:
        """The serving worker: the only process of this model that can hold GPU memory."""
        c = self._chan
        return [c.pid] if c is not None and c.pid is not None else []

    def standby_pid(self) -> int | None:
        """The warm standby while `cpu` in exit-worker mode (never initialises CUDA: not in `pids()`)."""
        s = self._standby
        return s.pid if s is not None else None

    def standby_status(self, timeout: float = 120.0) -> dict[str, Any]:
        """What the standby has imported and whether CUDA is initialised in it (for tests and debugging)."""
        s = self._standby
        if s is None:
            raise WorkerCrashedError(f"model {self.spec.name!r} has no standby worker")
        # Answered once the standby has prepared; a slow answer is not a reason to end it.
        return self._ask(s, "status", (), timeout, kill_on_timeout=False)  # type: ignore[no-any-return]

    def _start(self, adopt: tuple[str, Layout] | None, standby: bool, role: str) -> Channel:
        started = blank.take() if standby else None
        if started is not None:  # a process the CLI started before the models were known: its imports done
            proc, conn = started
            try:
                conn.send((0, "become", (self.spec.model_dump_json(), self.device, adopt)))
            except (OSError, ValueError):
                conn.close()
                proc.kill()
                proc.join(5.0)
            else:
                proc.name = f"tts-{role}-{self.spec.name}"
                chan = Channel(proc, conn, f"{role}-{self.spec.name}")
                chan.on_idle_end = self._idle_end
                return chan
        parent, child = roomy_pipe(self._ctx)
        proc = self._ctx.Process(
            target=worker_main,
            args=(child, self.spec.model_dump_json(), self.device, adopt, standby, os.getpid()),
            name=f"tts-{role}-{self.spec.name}",
            daemon=False,  # reaped explicitly by close(); a daemon could not start its own helpers
        )
        start_process(proc)
        child.close()
        chan = Channel(proc, parent, f"{role}-{self.spec.name}")
        chan.on_idle_end = self._idle_end
        return chan

    def _idle_end(self, chan: Channel) -> None:
        """The serving worker died with no request on it (killed, OOM-killed, crashed): tell the engine now,
        so the report says so and the next request loads again instead of failing."""
        if self._chan is not chan or self.on_death is None:
            return  # a standby that was never adopted, or no longer this model's worker
        msg = (
            f"the worker process of model {self.spec.name!r} exited (code {chan.proc.exitcode}) while "
            "idle; the model was unloaded and loads again on the next request"
        )
        log.warning(msg)
        # Not on the reader thread: unloading reaps this channel, which joins that thread.
        threading.Thread(target=self.on_death, args=(msg,), name="worker-died", daemon=True).start()

    def cannot_serve(self) -> str | None:
        """Why this model's worker cannot make progress now (stopped, dead), or None."""
        c = self._chan
        return cannot_serve(c.pid) if c is not None and c.pid is not None else None

    def kill(self) -> None:
        """End the worker at once (shutdown past its drain): the call in flight fails and is reaped."""
        for chan in (self._chan, self._standby):
            if chan is not None:
                chan.kill()

    def _spawn(self, adopt: tuple[str, Layout] | None) -> None:
        self._chan = self._start(adopt, False, "worker")

    def _spawn_standby(self) -> None:
        # Only while `cpu` (the block exists, no worker): a standby costs host RAM, so at most one.
        layout = self._layout
        if self.use_standby and self._standby is None and self._chan is None and layout is not None:
            self._standby = self._start((self._shm_name, layout), True, "standby")

    def _adopt_standby(self, timeout: float, block: tuple[str, Layout] | None) -> bool:
        """Make the standby the worker, handing it the block (None: for a first load); False if there is
        none or it died."""
        s, self._standby = self._standby, None
        if s is None:
            return False
        self._chan = s
        try:
            # It may still be importing (a restore right after offload): that wait is the cold spawn's too.
            self._call("adopt", (block,), timeout)
        except WorkerCrashedError:
            log.info("the standby worker of %s had exited; starting a worker cold", self.spec.name)
            return False
        return True

    def prespawn(self) -> None:
        """Start the worker process ahead of the first load: imports and host-only work (hibari's G2P)
        done, no device touched, so it costs host RAM and no GPU memory. `load` adopts it."""
        with self._lock:
            if self._chan is None and self._standby is None and self._shm is None:
                self._standby = self._start(None, True, "standby")

    def _stop_standby(self) -> None:
        # It holds nothing yet (no CUDA, no block mapped): killing it loses nothing, never waits on imports.
        s, self._standby = self._standby, None
        if s is not None:
            s.kill()
            s.reap()

    def _ask(
        self,
        chan: Channel,
        op: str,
        args: tuple[Any, ...],
        timeout: float | None,
        kill_on_timeout: bool = True,
    ) -> Any:
        """One request on `chan` and its final answer; raises the error type the reply names."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            rid, q = chan.request(op, args)
        except _Gone:
            raise self._crashed(chan, op) from None
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                msg = q.get(timeout=left)
            except queue.Empty:
                chan.forget(rid)
                if not kill_on_timeout:
                    late = f"{op} of model {self.spec.name!r} got no answer in {timeout:g}s"
                    raise ExecutionTimeout(late) from None
                chan.kill()  # marks the end expected: this timeout reports it
                self._drop(chan)
                raise ExecutionTimeout(
                    f"{op} of model {self.spec.name!r} ran past {timeout:g}s; its worker was stopped"
                ) from None
            if msg is None:
                raise self._crashed(chan, op)
            kind, value = msg
            if kind == "chunk":
                continue  # a streaming op's caller reads chunks itself; a plain call wants the result
            self._raise_for(op, kind, value)
            return value

    def _message_of(self, op: str, value: str) -> str:
        """A worker's error for clients: the message. Its traceback (server paths) goes to the log only."""
        message, sep, tb = str(value).partition("\nTraceback (most recent call last):")
        if sep:
            log.error("%s of model %s failed in its worker:%s%s", op, self.spec.name, sep, tb)
        return message.strip()

    def _crashed(self, chan: Channel, op: str) -> WorkerCrashedError:
        self._drop(chan)
        code = chan.reap()
        return WorkerCrashedError(
            f"the worker process of model {self.spec.name!r} exited (code {code}) during {op}; "
            "the model was unloaded and loads again on the next request"
        )

    def _drop(self, chan: Channel) -> None:
        """Forget `chan` if it is this model's worker (or standby) now; reap it."""
        if self._chan is chan:
            self._chan = None
        if self._standby is chan:
            self._standby = None
        chan.reap()

    def _call(self, op: str, args: tuple[Any, ...], timeout: float | None) -> Any:
        chan = self._chan
        if chan is None:
            raise WorkerCrashedError(f"model {self.spec.name!r} has no worker process (it was released)")
        return self._ask(chan, op, self._tag(args), timeout)

    def _tag(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """A request's arguments as the process expects them (a shared one: the model's name first)."""
        return args

    def load(self, timeout: float) -> Stats:
        deadline = time.monotonic() + timeout
        with self._lock:
            try:
                if not self._adopt_standby(timeout, None):
                    self._spawn(None)
                self.stats = self._call("load", (), max(deadline - time.monotonic(), 0.001))
            except BaseException:
                self._close_locked()
                raise
        return self.stats

    def offload(self) -> Stats:
        if self.moves_nothing:
            return self.stats
        with self._lock:
            if not self.exit_on_offload:
                self.stats = self._call("offload", (), 60.0)
                return self.stats
            if self._shm is None:
                if not self._shm_fits():
                    return self._offload_in_worker_locked()
                try:
                    self._layout = self._call("export", (self._shm_name,), 120.0)
                except RuntimeError as e:
                    if "No space left" not in str(e):
                        raise
                    log.warning("%s: %s", self.spec.name, e)
                    return self._offload_in_worker_locked()  # /dev/shm filled up meanwhile
                self._shm = SharedMemory(name=self._shm_name)
            chan = self._chan
            if chan is not None:
                chan.expected_end = True
            self._call("exit", (), 30.0)
            if chan is not None:
                self._drop(chan)
            self._spawn_standby()
        self.stats = replace(self.stats, vram_bytes=0)
        return self.stats

    def _shm_fits(self) -> bool:
        """Whether /dev/shm can take the host copy; if not, say so and fall back to keep-worker."""
        need = self.stats.host_bytes
        free = shm_free_bytes()
        if free is None or free >= need + (1 << 20):
            return True
        log.warning(
            "model %s: cpuMode exit-worker needs %d bytes in /dev/shm for its host copy but only %d are "
            "free; keeping the host copy in the worker instead (keep-worker). Give the pod a larger "
            "/dev/shm (Docker: --shm-size; Kubernetes: an emptyDir with medium Memory)",
            self.spec.name,
            need,
            free,
        )
        return False

    def _offload_in_worker_locked(self) -> Stats:
        self.exit_on_offload = self.use_standby = False  # for good: the space will not grow by itself
        self.stats = self._call("offload", (), 60.0)
        return self.stats

    def restore(self, timeout: float) -> Stats:
        if self.moves_nothing:
            if self._chan is None:
                raise WorkerCrashedError(f"model {self.spec.name!r} has no worker process (it was released)")
            return self.stats
        deadline = time.monotonic() + timeout
        with self._lock:
            try:
                layout = self._layout
                cold = self._chan is None and self._shm is not None and layout is not None
                if cold and layout is not None and not self._adopt_standby(timeout, (self._shm_name, layout)):
                    self._spawn((self._shm_name, layout))
                self.stats = self._call("restore", (), max(deadline - time.monotonic(), 0.001))
            except BaseException:
                if self.exit_on_offload and self._shm is not None:
                    # The model stays `cpu`, and in this mode `cpu` holds no CUDA context (only a standby).
                    self._stop_worker()
                    self._spawn_standby()
                    self.stats = replace(self.stats, vram_bytes=0)
                raise
        return self.stats

    def synthesize(
        self,
        text: str,
        voice: str | None,
        speed: float,
        timeout: float | None,
        cancel: threading.Event | None = None,
    ) -> tuple[np.ndarray, int]:
        # No lock: requests wait on the worker together; the worker runs as many as its backend takes.
        if cancel is None:
            samples, sr = self._call("synthesize", (text, voice, speed), timeout)
            return samples, sr
        with self._cancellable("synthesize", (text, voice, speed), cancel) as (chan, rid, replies, stop):
            kind, value = self._next_reply(chan, rid, replies, timeout, cancel, stop)
        self._raise_for("synthesize", kind, value)  # `cancelled` once `cancel` stopped it
        samples, sr = value
        return samples, sr

    def synthesize_stream(
        self,
        text: str,
        voice: str | None,
        speed: float,
        timeout: float | None,
        cancel: threading.Event | None = None,
    ) -> Chunks:
        """Chunks as the worker sends them (one reply each); runs beside other requests, like `synthesize`."""
        with self._cancellable("stream", (text, voice, speed), cancel) as (chan, rid, replies, stop):
            final = False
            try:
                while not final:
                    try:
                        kind, value = self._next_reply(chan, rid, replies, timeout, cancel, stop)
                    except BaseException:
                        final = True  # the worker is gone (crash, timeout): nothing left to stop
                        raise
                    final = kind != "chunk"
                    if final:
                        self._raise_for("stream", kind, value)
                    elif not stop.done:
                        yield value
            finally:
                if not final:  # the consumer left early: stop the model and wait until it has
                    stop()
                    with contextlib.suppress(Exception):
                        while self._next_reply(chan, rid, replies, timeout, None, stop)[0] == "chunk":
                            pass

    @contextlib.contextmanager
    def _cancellable(
        self, op: str, args: tuple[Any, ...], cancel: threading.Event | None
    ) -> Iterator[tuple[Channel, int, Inbox, _Stop]]:
        """One request whose replies the caller reads, and `stop` (tell the worker to stop it; once). A
        `Cancel` wakes the caller's wait when set; a plain Event is looked at now and then."""
        chan = self._chan
        if chan is None:
            raise WorkerCrashedError(f"model {self.spec.name!r} has no worker process (it was released)")
        try:
            rid, replies = chan.request(op, self._tag(args))
        except _Gone:
            raise self._crashed(chan, op) from None
        unwake = cancel.on_set(lambda: replies.put(_WAKE)) if isinstance(cancel, Cancel) else None
        try:
            yield chan, rid, replies, _Stop(chan, rid)
        finally:
            if unwake is not None:
                unwake()

    def _next_reply(
        self,
        chan: Channel,
        rid: int,
        replies: Inbox,
        timeout: float | None,
        cancel: threading.Event | None,
        stop: Callable[[], None],
    ) -> tuple[str, Any]:
        """The next reply of a stream, within `timeout`; `stop()` as soon as `cancel` is set."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # A Cancel wakes this wait itself; a plain Event can only be looked at now and then.
        poll = cancel is not None and not isinstance(cancel, Cancel)
        while True:
            if cancel is not None and cancel.is_set():
                stop()
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if poll:
                left = POLL_SECONDS if left is None else min(left, POLL_SECONDS)
            try:
                msg = replies.get(timeout=left)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    chan.forget(rid)
                    chan.kill()
                    self._drop(chan)
                    raise ExecutionTimeout(
                        f"a reply of model {self.spec.name!r} (a whole clip, or a stream's next piece) "
                        f"took longer than {timeout:g}s; "
                        "its worker was stopped"
                    ) from None
                continue
            if msg is _WAKE:
                continue  # its cancel was set: the top of the loop stops the stream
            if msg is None:
                raise self._crashed(chan, "stream")
            return msg

    def _raise_for(self, op: str, kind: str, value: Any) -> None:
        """The error a final reply names, if any (its traceback goes to the log, not the message)."""
        if kind == "oom":
            raise GpuOutOfMemory(value)
        if kind == "invalid":
            raise InvalidRequestError(value)
        if kind == "cancelled":
            raise RequestCancelled(value)
        if kind != "ok":
            raise RuntimeError(self._message_of(op, value))

    def host_intact(self) -> bool:
        if self._shm is not None:
            return True
        c = self._chan
        return c is not None and c.alive()

    def _stop_worker(self) -> None:
        # Ask politely (the worker frees CUDA and shared memory itself), then make sure.
        chan = self._chan
        if chan is None:
            return
        chan.expected_end = True
        if chan.alive():
            with contextlib.suppress(Exception):
                self._ask(chan, "exit", (), 5.0)
        chan.kill()
        self._drop(chan)

    def _close_locked(self) -> None:
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
        forget_block(self._shm_name)

    def close(self) -> None:
        # A verb that hangs is ended by its own timeout; close must not wait behind it for long.
        got = self._lock.acquire(timeout=5.0)
        try:
            if not got:
                chan = self._chan
                if chan is not None:
                    chan.kill()
            self._close_locked()
        finally:
            if got:
                self._lock.release()
