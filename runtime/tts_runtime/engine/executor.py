"""Where a model executes, as seen by the engine: the `Executor` protocol and the in-process executor."""

from __future__ import annotations

import queue
import threading
from typing import Any, Protocol

import numpy as np

from tts_contract import ModelSpec
from tts_runtime.engine.backends import Backend, Chunks, Stats, make_backend
from tts_runtime.engine.cancel import Cancel
from tts_runtime.engine.dispatch import Dispatcher, Job

POLL_SECONDS = 0.05  # how often a stream looks at a plain threading.Event (a Cancel wakes it instead)


class ExecutionTimeout(Exception):
    """A load, restore or request ran past its time limit (its worker, if any, has been killed)."""


class Executor(Protocol):
    """The memory verbs of one model plus requests; calls are thread-safe. Requests run concurrently up to
    the backend's `max_concurrency`; a memory verb waits for the requests in flight and runs alone.

    Errors: `GpuOutOfMemory` (rolled back to the host copy), `InvalidRequestError` (the client's
    mistake), `WorkerCrashedError`, `ExecutionTimeout`, anything else = the model's own failure.
    """

    stats: Stats
    # True on a CPU device (keep-worker): offload and restore are free no-ops, the state machine still runs.
    moves_nothing: bool
    # Other models live in its process too (`workerGroup`): the process's NVML count is not this model's.
    shares_process: bool

    def pids(self) -> list[int]: ...

    def load(self, timeout: float) -> Stats: ...

    def offload(self) -> Stats: ...

    def restore(self, timeout: float) -> Stats: ...

    # `cancel` set (from any thread) stops a backend whose stream joins to its whole clip between two
    # pieces (`RequestCancelled`); other backends finish the clip.
    def synthesize(
        self,
        text: str,
        voice: str | None,
        speed: float,
        timeout: float | None,
        cancel: threading.Event | None = None,
    ) -> tuple[np.ndarray, int]: ...

    # Chunks as the model makes them; `timeout` bounds the wait for each. Setting `cancel` (from any
    # thread) or closing the generator stops the model after the piece in progress; after `cancel` the
    # generator yields nothing more and ends once the model has stopped.
    def synthesize_stream(
        self,
        text: str,
        voice: str | None,
        speed: float,
        timeout: float | None,
        cancel: threading.Event | None = None,
    ) -> Chunks: ...

    def host_intact(self) -> bool: ...  # after a failure: is the host copy still usable (model can be `cpu`)?

    def close(self) -> None: ...  # free everything, end the worker; idempotent

    def kill(self) -> None: ...  # shutdown past its drain: end the worker now, the call in flight fails

    def cannot_serve(self) -> str | None: ...  # why it cannot make progress now (a stopped worker), or None


class InlineExecutor:
    """Runs the backend in this process (tests, CPU-only hosts that want no subprocess)."""

    shares_process = False

    def __init__(self, spec: ModelSpec, device: str) -> None:
        self.spec = spec
        self.backend: Backend = make_backend(spec, device)
        self.stats = Stats(device="cpu" if not device.startswith("cuda") else device)
        # Executing on a CPU, the host copy is what runs: offload would free nothing, restore copy nothing.
        self.moves_nothing = not device.startswith("cuda")
        self._dispatch = Dispatcher(self.backend, spec.name)
        self._loaded = False
        self._closed = False

    def pids(self) -> list[int]:
        return []

    def load(self, timeout: float) -> Stats:
        # A thread cannot be killed: on timeout the load is abandoned and its result freed when it ends.
        result: list[BaseException | None] = []
        done = threading.Event()

        def run() -> None:
            try:
                self.backend.load()
                result.append(None)
            except BaseException as e:
                result.append(e)
            done.set()
            if self._closed:
                self.backend.close()

        threading.Thread(target=run, name=f"load-{self.spec.name}", daemon=True).start()
        if not done.wait(timeout):
            self._closed = True
            raise ExecutionTimeout(
                f"loading {self.spec.name!r} took longer than loadTimeoutSeconds={timeout:g}"
            )
        if result[0] is not None:
            self.backend.close()
            raise result[0]
        self._loaded = True
        return self._refresh()

    def _refresh(self) -> Stats:
        self.stats = self.backend.stats()
        return self.stats

    def offload(self) -> Stats:
        if self.moves_nothing:
            return self.stats
        with self._dispatch.exclusive():
            self.backend.offload()
            return self._refresh()

    def restore(self, timeout: float) -> Stats:
        if self.moves_nothing:
            return self.stats
        with self._dispatch.exclusive():
            self.backend.restore()
            return self._refresh()

    def synthesize(
        self,
        text: str,
        voice: str | None,
        speed: float,
        timeout: float | None,
        cancel: threading.Event | None = None,
    ) -> tuple[np.ndarray, int]:
        samples, sr = self._dispatch.call("synthesize", text, voice, speed, cancel=cancel)
        return samples, sr

    def synthesize_stream(
        self,
        text: str,
        voice: str | None,
        speed: float,
        timeout: float | None,
        cancel: threading.Event | None = None,
    ) -> Chunks:
        replies: queue.SimpleQueue[tuple[Any, BaseException | None, bool] | None] = queue.SimpleQueue()
        job = Job("stream", (text, voice, speed), lambda *reply: replies.put(reply))
        # A Cancel wakes the wait below (None on the queue); a plain Event is looked at now and then.
        unwake = cancel.on_set(lambda: replies.put(None)) if isinstance(cancel, Cancel) else None
        poll = None if cancel is None or unwake is not None else POLL_SECONDS
        self._dispatch.submit(job)
        final = False
        try:
            while not final:
                while True:
                    if cancel is not None and cancel.is_set():
                        job.cancel.set()
                    try:
                        reply = replies.get(timeout=poll)
                    except queue.Empty:
                        continue
                    if reply is not None:
                        break
                value, error, final = reply
                if error is not None:
                    raise error
                if not final and not job.cancel.is_set():
                    yield value
        finally:
            if not final:  # the consumer left early: stop the model, wait until it has
                job.cancel.set()
                while (reply := replies.get()) is None or not reply[2]:
                    pass
            if unwake is not None:
                unwake()

    def host_intact(self) -> bool:
        return self._loaded and not self._closed

    def kill(self) -> None:
        pass  # a thread cannot be killed; shutdown abandons it (it is a daemon thread)

    def cannot_serve(self) -> str | None:
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with self._dispatch.exclusive():
                self.backend.close()
            self._dispatch.close()
            self.stats = Stats(device=self.stats.device)
