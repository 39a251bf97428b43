"""Runs one model's requests: several at once where its backend allows, batched where it has a batch call.

A backend says how many requests it takes at once (`max_concurrency`, default 1: ONNX Runtime sessions
and torch inference are safe to call from several threads, plug-ins opt in) and may offer
`synthesize_batch(requests)`, which gets up to `max_batch_size` requests that were waiting together
(dynamic batching: a batch is whatever queued while the previous call ran, so one client waits for
nothing). Memory verbs run in `exclusive()`: after every request submitted before them has finished and
before any submitted later starts, so offload never moves weights under a request. A backend whose stream
joined is exactly its `synthesize` (`stream_joins_whole`) runs whole requests as that stream: one whose
client went away (`job.cancel`) stops between two pieces.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tts_runtime.engine.errors import RequestCancelled

# reply(value, error, final): a request's chunks (final False) and then its one final outcome.
Reply = Callable[[Any, BaseException | None, bool], None]
BATCHABLE = "synthesize"
MAX_THREADS = 64  # a plug-in asking for more than this gets this many


@dataclass
class Job:
    op: str
    args: tuple[Any, ...]
    reply: Reply
    cancel: threading.Event = field(default_factory=threading.Event)  # a stream's consumer has gone


def concurrency_of(backend: Any) -> int:
    try:
        return max(1, min(MAX_THREADS, int(getattr(backend, "max_concurrency", 1) or 1)))
    except (TypeError, ValueError):
        return 1


def batch_size_of(backend: Any) -> int:
    if not callable(getattr(backend, "synthesize_batch", None)):
        return 1
    try:
        return max(1, int(getattr(backend, "max_batch_size", 1) or 1))
    except (TypeError, ValueError):
        return 1


class Dispatcher:
    """A small pool of threads that pull a model's requests; its size follows the backend's declaration."""

    def __init__(self, backend: Any, name: str = "model") -> None:
        self.backend = backend
        self.name = name
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._active = 0  # calls into the backend running now
        self._idle = 0  # pool threads waiting for work
        self._threads = 0
        self._held = False  # a memory verb runs: nothing starts
        self._stopped = False

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopped:
                raise RuntimeError(f"the request pool of {self.name!r} is closed")
            self._queue.append(job)
            # Threads start on demand: the limit is only known once the model is built (a plug-in's).
            if self._idle == 0 and self._threads < concurrency_of(self.backend):
                self._threads += 1
                name = f"req-{self.name}-{self._threads}"
                threading.Thread(target=self._pull, name=name, daemon=True).start()
            self._cond.notify()

    def call(self, op: str, *args: Any, cancel: threading.Event | None = None) -> Any:
        """Submit one request and wait for its outcome on this thread (the in-process executor)."""
        done = threading.Event()
        out: list[Any] = [None, None]

        def reply(value: Any, error: BaseException | None, final: bool) -> None:
            if final:
                out[0], out[1] = value, error
                done.set()

        self.submit(Job(op, args, reply, cancel or threading.Event()))
        done.wait()
        if out[1] is not None:
            raise out[1]
        return out[0]

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Wait for every request submitted so far to finish; nothing else runs until the block ends."""
        with self._cond:
            while self._queue or self._active or self._held:
                self._cond.wait()
            self._held = True
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()

    def in_flight(self) -> int:
        with self._cond:
            return len(self._queue) + self._active

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _take(self) -> list[Job]:
        first = self._queue.popleft()
        limit = batch_size_of(self.backend) if first.op == BATCHABLE else 1
        batch = [first]
        while len(batch) < limit and self._queue and self._queue[0].op == BATCHABLE:
            batch.append(self._queue.popleft())
        return batch

    def _pull(self) -> None:
        while True:
            with self._cond:
                self._idle += 1
                while not self._stopped and (
                    self._held or not self._queue or self._active >= concurrency_of(self.backend)
                ):
                    self._cond.wait()
                self._idle -= 1
                if self._stopped:
                    self._threads -= 1
                    return
                batch = self._take()
                self._active += 1
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._active -= 1
                    self._cond.notify_all()

    def _run(self, batch: list[Job]) -> None:
        if len(batch) > 1:
            try:
                outs = self.backend.synthesize_batch([j.args for j in batch])
                if len(outs) != len(batch):
                    raise RuntimeError(f"synthesize_batch gave {len(outs)} results for {len(batch)} requests")
            except Exception as e:
                for j in batch:
                    j.reply(None, e, True)
                return
            for j, o in zip(batch, outs, strict=True):
                j.reply(None, o, True) if isinstance(o, BaseException) else j.reply(o, None, True)
            return
        job = batch[0]
        try:
            result = run_request(self.backend, job)
        except Exception as e:
            job.reply(None, e, True)
            return
        job.reply(result, None, True)


def run_request(backend: Any, job: Job) -> Any:
    """One request on the backend; a streaming op sends its chunks through `job.reply` before returning."""
    if job.op == "synthesize":
        if getattr(backend, "stream_joins_whole", False) is True:
            return _joined(backend, job)
        return backend.synthesize(*job.args)
    if job.op == "stream":
        return _stream(backend, job)
    raise ValueError(f"unknown request op {job.op!r}")


def _joined(backend: Any, job: Job) -> tuple[np.ndarray, int]:
    """`synthesize` as the backend's own stream, joined (the same audio: `stream_joins_whole`), so that
    `job.cancel` (its client went away) stops the model between two pieces instead of after the last."""
    stopped = f"the client of a {job.op} request went away; its model stopped"
    if job.cancel.is_set():
        raise RequestCancelled(stopped)
    pieces: list[tuple[np.ndarray, int]] = []
    chunks = backend.synthesize_stream(*job.args)
    try:
        for piece in chunks:
            if job.cancel.is_set():
                raise RequestCancelled(stopped)
            pieces.append(piece)
    finally:
        chunks.close()
    if not pieces:  # nothing to say: the model's own answer for that (its empty clip and its rate)
        return backend.synthesize(*job.args)  # type: ignore[no-any-return]
    return np.concatenate([samples for samples, _ in pieces]), pieces[-1][1]


def _stream(backend: Any, job: Job) -> str | None:
    """`synthesize_stream`: each piece a chunk reply as soon as it exists; `job.cancel` stops it between
    pieces (the final reply then says "cancelled")."""
    if job.cancel.is_set():
        return "cancelled"
    chunks = backend.synthesize_stream(*job.args)
    try:
        for chunk in chunks:
            job.reply(chunk, None, False)
            if job.cancel.is_set():
                return "cancelled"
    finally:
        chunks.close()
    return None
