"""Several models in one worker process (`workerGroup`): the process's loop and the engine's proxies to it.

One process, one interpreter, one set of imports and (on a GPU) one CUDA context for every model of the
group, which is what a small model costs most of in host RAM. Each model keeps its own residency: its own
state machine, leases and verbs in the engine, its own backend and request pool in the process. `release`
of one model drops that model's backend (its host copy and device memory); the process ends when the last
of its models is released. What acts on a whole process (`cpuMode` exit-worker and suspend, killing the
worker) cannot be one model's: the contract refuses those modes for a group, and a crash, a kill after a
timeout or an OOM kill of the process unloads every model in it (each one's requests in flight get
`WorkerCrashedError`; the next request loads it again in a fresh process).

Protocol: the engine's `(id, op, args)` carries the model's name first in `args` (`load` also carries its
spec); memory verbs of all the group's models run one at a time on the process's verb thread, each after
that model's own requests received before it, while the main thread keeps routing the other models'
requests.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import multiprocessing as mp
import os
import queue
import sys
import threading
import weakref
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from tts_contract import ModelSpec
from tts_runtime.engine.backends import Stats, make_backend
from tts_runtime.engine.dispatch import Dispatcher, Job
from tts_runtime.engine.lifecycle import become_worker, forget_block, start_process
from tts_runtime.engine.tuning import roomy_pipe
from tts_runtime.engine.worker import (
    REQUEST_OPS,
    Channel,
    WorkerExecutor,
    _outcome,
    _preimport,
    _Replies,
)

log = logging.getLogger(__name__)
UNLOAD_TIMEOUT = 60.0  # an unload waits for the model's requests in flight, then frees it


# -- inside the process ----------------------------------------------------------------------------
@dataclass
class _Member:
    backend: Any
    pool: Dispatcher


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc keeps them otherwise): a released model's RSS goes."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).malloc_trim(0)


class _Host:
    """The models loaded in this process, and the one thread their memory verbs run on."""

    def __init__(self, out: _Replies, device: str) -> None:
        self.out = out
        self.device = device
        self._members: dict[str, _Member] = {}
        self._lock = threading.Lock()
        self._verbs: queue.SimpleQueue[tuple[int, str, str, tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run_verbs, name="verbs", daemon=True)
        self._thread.start()

    def member(self, name: str) -> _Member | None:
        with self._lock:
            return self._members.get(name)

    def submit(self, rid: int, op: str, name: str, args: tuple[Any, ...]) -> None:
        self._verbs.put((rid, op, name, args))

    def _run_verbs(self) -> None:
        while (item := self._verbs.get()) is not None:
            rid, op, name, args = item
            try:
                result = self._verb(op, name, args)
            except Exception as e:
                self.out.send(rid, *_outcome(e))
            else:
                self.out.send(rid, "ok", result)

    def _verb(self, op: str, name: str, args: tuple[Any, ...]) -> Any:
        if op == "load":
            if self.member(name) is not None:
                raise ValueError(f"model {name!r} is already loaded in this worker")
            spec = ModelSpec.model_validate_json(args[0])
            backend: Any = make_backend(spec, self.device)
            try:
                backend.load()
            except BaseException:
                with contextlib.suppress(Exception):  # free what the failed load built: others live on
                    backend.close()
                raise
            with self._lock:
                self._members[name] = _Member(backend, Dispatcher(backend, name))
            return backend.stats()
        m = self.member(name)
        if m is None:
            raise ValueError(f"model {name!r} is not loaded in this worker")
        if op == "unload":
            with self._lock:
                del self._members[name]  # requests that come from now on are refused
            with m.pool.exclusive():  # ... and the ones received before run to their end first
                m.backend.close()
            m.pool.close()
            del m
            gc.collect()
            _trim_heap()
            return None
        with m.pool.exclusive():
            if op == "offload":
                m.backend.offload()
            elif op == "restore":
                m.backend.restore()
            else:
                raise ValueError(f"unknown worker op {op!r}")
            return m.backend.stats()

    def close(self) -> None:
        self._verbs.put(None)
        self._thread.join()
        with self._lock:
            members, self._members = list(self._members.values()), {}
        for m in members:
            m.pool.close()
            with contextlib.suppress(Exception):
                m.backend.close()


def shared_worker_main(conn: Connection, specs_json: list[str], device: str, parent_pid: int) -> None:
    """The process of a worker group: serve its models' verbs and requests until told to exit (the engine
    does so once none of them is loaded) or the engine goes away."""
    become_worker(parent_pid)
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # number GPUs as NVML does
    for spec_json in specs_json:  # the imports every member will need, touching no device
        _preimport(ModelSpec.model_validate_json(spec_json))
    out = _Replies(conn)
    host = _Host(out, device)
    in_flight: weakref.WeakValueDictionary[int, Job] = weakref.WeakValueDictionary()  # requests, to cancel
    while True:
        try:
            rid, op, args = conn.recv()
        except (EOFError, OSError):
            break
        if op == "cancel":  # request ids are the process's: a request is found without its model
            job = in_flight.get(args[0])
            if job is not None:
                job.cancel.set()
            continue
        if op == "exit":
            out.send(rid, "ok", None)
            break
        name, rest = args[0], tuple(args[1:])
        if op in REQUEST_OPS:
            m = host.member(name)
            if m is None:
                out.send(rid, "error", f"model {name!r} is not loaded in this worker")
                continue
            job = Job(op, rest, out.reply_for(rid))
            in_flight[rid] = job
            try:
                m.pool.submit(job)
            except RuntimeError as e:  # released meanwhile
                out.send(rid, "error", str(e))
            continue
        if op == "stats":  # a query: no need to wait for requests
            m = host.member(name)
            if m is None:
                out.send(rid, "error", f"model {name!r} is not loaded in this worker")
            else:
                out.send(rid, "ok", m.backend.stats())
            continue
        host.submit(rid, op, name, rest)
    host.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: the OS frees memory and CUDA on exit


# -- in the engine ---------------------------------------------------------------------------------
class SharedWorker:
    """The engine's side of one worker group: the process (started on demand), and who is loaded in it."""

    def __init__(self, group: str, specs: list[ModelSpec], device: str) -> None:
        self.group = group
        self.device = device
        self.names = [s.name for s in specs]
        self._specs_json = [s.model_dump_json() for s in specs]
        self._ctx = mp.get_context("spawn")
        self._lock = threading.Lock()  # the process's start and end, and membership
        self._chan: Channel | None = None
        self._members: dict[str, SharedExecutor] = {}

    def pid(self) -> int | None:
        c = self._chan
        return c.pid if c is not None else None

    def _ensure_locked(self) -> Channel:
        chan = self._chan
        if chan is not None and chan.alive():
            return chan
        if chan is not None:
            chan.reap()  # it died: its members were told (`_ended`), a fresh one takes its place
        parent, child = roomy_pipe(self._ctx)
        proc = self._ctx.Process(
            target=shared_worker_main,
            args=(child, self._specs_json, self.device, os.getpid()),
            name=f"tts-worker-{self.group}",
            daemon=False,
        )
        start_process(proc)
        child.close()
        chan = Channel(proc, parent, f"group-{self.group}")
        chan.on_end = self._ended
        self._chan = chan
        return chan

    def prespawn(self) -> None:
        """Start the process ahead of the first load (imports done, no device touched)."""
        with self._lock:
            if self._chan is None:
                self._ensure_locked()

    def attach(self, ex: SharedExecutor) -> Channel:
        """The process `ex`'s model is to be loaded in (started if none runs)."""
        with self._lock:
            chan = self._ensure_locked()
            self._members[ex.spec.name] = ex
            return chan

    def detach(self, ex: SharedExecutor, chan: Channel | None) -> None:
        """`ex`'s model leaves the process: its backend is freed there; the last one out ends the process."""
        with self._lock:
            if self._members.get(ex.spec.name) is ex:
                del self._members[ex.spec.name]
            if chan is not None and chan is self._chan and chan.alive():
                with contextlib.suppress(Exception):  # not loaded there (a failed load): nothing to free
                    ex.ask_unload(chan)
            if not self._members:
                self._end_locked()

    def _end_locked(self) -> None:
        chan, self._chan = self._chan, None
        if chan is None:
            return
        chan.expected_end = True
        if chan.alive():
            with contextlib.suppress(Exception):
                _, replies = chan.request("exit", ())
                replies.get(timeout=5.0)
        chan.kill()
        chan.reap()

    def close_idle(self) -> None:
        """End the process if no model is loaded in it (a prespawned one at shutdown)."""
        with self._lock:
            if not self._members:
                self._end_locked()

    def _ended(self, chan: Channel) -> None:
        """The process ended (reader thread): every model still in it is unloaded by the engine."""
        for ex in list(self._members.values()):
            ex.process_ended(chan)


class SharedExecutor(WorkerExecutor):
    """One model of a worker group: the `Executor` of that model, in the group's process."""

    shares_process = True

    def __init__(self, spec: ModelSpec, device: str, group: SharedWorker) -> None:
        super().__init__(spec, device, "keep-worker")
        self.group = group

    def _tag(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (self.spec.name, *args)

    def prespawn(self) -> None:
        self.group.prespawn()

    def load(self, timeout: float) -> Stats:
        with self._lock:
            try:
                self._chan = self.group.attach(self)
                loaded = self._call("load", (self.spec.model_dump_json(),), timeout)
                self.stats = self._own(loaded, resident=True)
            except BaseException:
                self._close_locked()
                raise
        return self.stats

    def offload(self) -> Stats:
        self.stats = self._own(super().offload(), resident=False)
        return self.stats

    def restore(self, timeout: float) -> Stats:
        self.stats = self._own(super().restore(timeout), resident=True)
        return self.stats

    def _own(self, stats: Stats, *, resident: bool) -> Stats:
        """This model's part of what the process holds: its weights while on the device. The context, the
        allocator's cache and workspaces are the process's, counted once in the report's `gpu`."""
        on_device = resident and stats.device.startswith("cuda")
        return replace(stats, vram_bytes=(stats.device_bytes or stats.host_bytes) if on_device else 0)

    def ask_unload(self, chan: Channel) -> None:
        self._ask(chan, "unload", (self.spec.name,), UNLOAD_TIMEOUT)

    def process_ended(self, chan: Channel) -> None:
        """The group's process ended under this model (crash, kill, OOM kill): the engine unloads it."""
        if self._chan is not chan or self.on_death is None:
            return
        msg = (
            f"the worker process of workerGroup {self.group.group!r} (model {self.spec.name!r} and its "
            f"peers) exited (code {chan.proc.exitcode}); the model was unloaded and loads again on the "
            "next request"
        )
        log.warning(msg)
        threading.Thread(target=self.on_death, args=(msg,), name="worker-died", daemon=True).start()

    def _idle_end(self, chan: Channel) -> None:
        pass  # the group's `_ended` tells every model of the process, idle or not

    def _close_locked(self) -> None:
        chan, self._chan = self._chan, None
        self.group.detach(self, chan)
        self.stats = Stats(device=self.stats.device)
        forget_block(self._shm_name)

    def kill(self) -> None:
        chan = self._chan
        if chan is not None:
            chan.kill()  # the whole process: shutdown past its drain, every model in it ends
