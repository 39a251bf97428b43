"""One streamed speech response: synthesis under one lease in a thread, encoded bytes handed to the loop."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tts_runtime.engine import Engine
from tts_runtime.engine.cancel import Cancel
from tts_runtime.engine.errors import ResidencyError
from tts_runtime.server.audio import StreamEncoder
from tts_runtime.server.errors import ApiError, error_response, from_residency
from tts_runtime.server.inflight import ClientGone, disconnected
from tts_runtime.server.state import Runtime

log = logging.getLogger("tts_runtime.server")


def no_audio(model: str) -> ApiError:
    """Text the model turned into no sound at all (emoji, a script its voice cannot read)."""
    return ApiError(
        400,
        f"model {model!r} produced no audio for this input: it has nothing this voice can pronounce "
        "(e.g. only emoji, or a script other than the voice's language); send text in the voice's language",
        code="no_audio",
        param="input",
    )


@dataclass(frozen=True)
class _Started:
    sample_rate: int


_END = object()


class SpeechStream:
    """Synthesis and encoding run in one worker thread under one lease, from the first segment to the
    last; the event loop only moves bytes. `cancel()` (a client went away) stops the model after the
    segment in progress; `aclose()` cancels and waits until the lease is closed."""

    def __init__(
        self,
        engine: Engine,
        runtime: Runtime,
        model: str,
        text: str,
        voice: str | None,
        speed: float,
        fmt: str,
    ) -> None:
        self.engine, self.runtime, self.metrics = engine, runtime, runtime.metrics
        self.model, self.text, self.voice, self.speed, self.fmt = model, text, voice, speed, fmt
        self.sample_rate = 0
        self.audio_seconds = 0.0
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._cancel = Cancel()  # wakes the thread waiting on the model when set
        self._started = time.perf_counter()
        self._producer: asyncio.Future[None] | None = None
        self._after: contextlib.AsyncExitStack | None = None

    def then_close(self, stack: contextlib.AsyncExitStack) -> None:
        """What to close after the stream itself (the request's admission slot)."""
        self._after = stack

    async def start(self, request: Request) -> bytes:
        """Take the lease and wait for the first audio: its bytes, or the error (nothing sent yet).
        ClientGone if the client leaves first (e.g. while the model loads): nothing is synthesized."""
        # On the model's speech threads, like a whole request: a backlog stays with its model.
        self._producer = asyncio.ensure_future(self.runtime.speech.run(self.model, self._produce))
        try:
            first = await self._first(request)
            if isinstance(first, BaseException):
                raise first
            assert isinstance(first, _Started)
            self.sample_rate = first.sample_rate
            self.metrics.first_audio_seconds.labels(self.model, self.fmt).observe(
                time.perf_counter() - self._started
            )
            data = await self._queue.get()
            if isinstance(data, BaseException):
                raise data
            return bytes(data)
        except BaseException:
            # Not waiting for the producer: it may still wait for its model (a load), and the answer
            # (an error, or nothing for a client that left) should not. It stops as soon as it runs.
            self.cancel()
            raise

    async def _first(self, request: Request) -> Any:
        got = asyncio.ensure_future(self._queue.get())
        left = asyncio.ensure_future(disconnected(request))
        try:
            await asyncio.wait({got, left}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()
        if got.done():
            return got.result()
        got.cancel()
        raise ClientGone(f"the client of a {self.model} stream disconnected before its first audio")

    async def rest(self) -> AsyncIterator[bytes]:
        """The remaining bytes; raises the model's error if it fails mid-stream."""
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            if item:
                yield item

    def cancel(self) -> None:
        self._cancel.set()

    async def aclose(self) -> None:
        self._cancel.set()
        try:
            if self._producer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._producer)
        finally:
            after, self._after = self._after, None
            if after is not None:
                await after.aclose()

    # -- in the worker thread -------------------------------------------------------------------------
    def _put(self, *items: Any) -> None:
        # One wake-up of the loop for several items (each call_soon_threadsafe is a write to its pipe).
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening any more
            self._loop.call_soon_threadsafe(self._put_now, items)

    def _put_now(self, items: tuple[Any, ...]) -> None:
        for item in items:
            self._queue.put_nowait(item)

    def _produce(self) -> None:
        outcome = "error"
        pieces = 0
        last: tuple[Any, ...] = ()  # sent with the end: the encoder's tail, or the error
        try:
            encoder: StreamEncoder | None = None
            with self.engine.lease(self.model) as lease:
                if self._cancel.is_set():  # the client left while the model loaded: synthesize nothing
                    outcome = "cancelled"
                    return
                for piece in lease.stream(self.text, self.voice, self.speed, cancel=self._cancel):
                    pieces += 1
                    if piece.samples.size == 0:
                        continue  # a segment with nothing to say (an emoji between sentences)
                    self.audio_seconds += piece.samples.size / piece.sample_rate
                    if encoder is None:
                        encoder = StreamEncoder(self.fmt, piece.sample_rate)
                        self._put(_Started(piece.sample_rate), encoder.add(piece.samples))
                    else:
                        self._put(encoder.add(piece.samples))
            # The lease is closed here: an offload after use overlaps sending the last bytes.
            if self._cancel.is_set():
                outcome = "cancelled"
                return
            if encoder is None:
                raise no_audio(self.model)
            last = (encoder.finish(),)
            outcome = "completed"
        except BaseException as err:
            if not isinstance(err, ApiError | ResidencyError):
                log.exception("streamed synthesis of %s failed", self.model)
            last = (err,)
        finally:
            self.metrics.speech_segments.labels(self.model).inc(pieces)
            self.metrics.speech_streams.labels(self.model, self.fmt, outcome).inc()
            self._put(*last, _END)


class _Closing:
    """Mixin for a streamed response: whatever ends it (last byte, client gone, error), the stream is
    closed, so the lease is never left to garbage collection."""

    stream: SpeechStream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)  # type: ignore[misc]
        finally:
            await self.stream.aclose()


class AudioStreamResponse(_Closing, StreamingResponse):
    """`stream_format: "audio"`: the encoded file as chunked transfer."""

    def __init__(self, stream: SpeechStream, first: bytes, media_type: str, headers: dict[str, str]) -> None:
        self.stream = stream

        async def body() -> AsyncIterator[bytes]:
            yield first
            async for data in stream.rest():
                yield data
            # Lease and admission slot end before the last (empty) chunk: a client that has the whole
            # file finds the server's queue without it.
            await stream.aclose()

        super().__init__(body(), media_type=media_type, headers=headers)


class SseSpeechResponse(_Closing, EventSourceResponse):
    """`stream_format: "sse"`: OpenAI's `speech.audio.delta` events (base64 audio), then
    `speech.audio.done` with usage; a failure mid-stream is an `error` event."""

    def __init__(self, stream: SpeechStream, first: bytes, headers: dict[str, str]) -> None:
        self.stream = stream

        async def events() -> AsyncIterator[ServerSentEvent]:
            try:
                yield _delta(first)
                async for data in stream.rest():
                    yield _delta(data)
            except ApiError as err:
                yield _error(err)
                return
            except ResidencyError as err:
                yield _error(from_residency(err))
                return
            except Exception:
                log.exception("streamed speech failed")
                yield _error(ApiError(500, "internal server error; see the runtime's log", code="internal"))
                return
            usage = {
                # No tokenizer stands behind these: characters in, milliseconds of audio out.
                "input_tokens": len(stream.text),
                "output_tokens": round(stream.audio_seconds * 1000),
            }
            usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
            await stream.aclose()  # as for audio: done, the request no longer counts as queued
            yield _event({"type": "speech.audio.done", "usage": usage})

        super().__init__(events(), headers=headers)


def _event(payload: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(payload, separators=(",", ":")), event=payload["type"])


def _delta(data: bytes) -> ServerSentEvent:
    return _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})


def _error(err: ApiError) -> ServerSentEvent:
    body = json.loads(bytes(error_response(err).body))
    return _event({"type": "error", **body})
