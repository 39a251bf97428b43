"""`POST /v1/audio/speech`: OpenAI's speech API on top of the residency engine, streamed or whole."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tts_runtime.engine import Engine
from tts_runtime.engine.cancel import Cancel
from tts_runtime.engine.errors import RequestCancelled, ResidencyError
from tts_runtime.server import audio
from tts_runtime.server.errors import ApiError
from tts_runtime.server.inflight import ClientGone, run_for_client
from tts_runtime.server.speech_stream import AudioStreamResponse, SpeechStream, SseSpeechResponse, no_audio
from tts_runtime.server.state import EngineDep, RuntimeDep
from tts_runtime.settings import MAX_INPUT_CHARS

router = APIRouter()

# OpenAI's voice names; a client written for OpenAI sends one of these and gets the model's default voice.
OPENAI_VOICES = frozenset(
    {
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "onyx",
        "nova",
        "sage",
        "shimmer",
        "verse",
        "marin",
        "cedar",
    }
)


class SpeechRequest(BaseModel):
    """OpenAI's body; unknown fields are ignored so newer OpenAI clients keep working."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    input: str
    voice: str | None = None
    response_format: str = "mp3"
    speed: float = 1.0
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] = "audio"
    # Not OpenAI's (Kokoro-FastAPI's): false sends the whole file at once, with its exact length in
    # the headers (a wav's sizes filled in), after all of it is synthesized. Ignored for "sse".
    stream: bool = True

    @field_validator("input")
    @classmethod
    def _input_length(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input is empty; send the text to speak")
        if len(value) > MAX_INPUT_CHARS:
            raise ValueError(
                f"input is {len(value)} characters; the limit is {MAX_INPUT_CHARS}, split the text"
            )
        return value

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in audio.SUPPORTED_FORMATS:
            raise ValueError(
                f"response_format {value!r} is not supported; use one of {', '.join(audio.SUPPORTED_FORMATS)}"
            )
        return value

    @field_validator("speed")
    @classmethod
    def _speed_range(cls, value: float) -> float:
        if not 0.25 <= value <= 4.0:
            raise ValueError(f"speed {value} is out of range; use a value from 0.25 to 4.0")
        return value


def choose_voice(requested: str | None, voices: list[str], default: str | None, model: str) -> str | None:
    """The voice to synthesize with: the requested one, or the default for OpenAI's names or none."""
    if requested is None or requested in OPENAI_VOICES or requested == "default":
        return default
    if voices and requested not in voices:
        raise ApiError(
            400,
            f"voice {requested!r} is not a voice of model {model!r}; use one of {', '.join(voices)}",
            code="unknown_voice",
            param="voice",
        )
    return requested


def _speak(
    gone: Cancel, engine: Engine, name: str, text: str, voice: str | None, speed: float, fmt: str
) -> tuple[bytes, int]:
    """Lease, synthesize and encode in one worker-thread hop (each hop costs latency on small requests).
    The lease ends before encoding, so an offload after use overlaps the encoding. A client that left
    while this waited for its model costs no synthesis; one that leaves during it stops the model at its
    next piece (where the model can stop: `Lease.synthesize`)."""
    with engine.lease(name) as lease:
        if gone.is_set():
            raise ClientGone(f"the client of a {name} request disconnected")
        try:
            out = lease.synthesize(text, voice=voice, speed=speed, cancel=gone)
        except RequestCancelled as err:
            raise ClientGone(str(err)) from None
    if out.samples.size == 0:
        raise no_audio(name)
    return audio.encode(out.samples, out.sample_rate, fmt), out.sample_rate


@router.post("/v1/audio/speech", response_class=Response, tags=["speech"])
async def create_speech(
    body: SpeechRequest, request: Request, engine: EngineDep, runtime: RuntimeDep
) -> Response:
    started = time.perf_counter()
    # Unresolved names never become a label: a client must not grow the metric's cardinality.
    name = "unknown"
    status = "error"
    streamed = body.stream_format == "sse" or body.stream
    try:
        async with contextlib.AsyncExitStack() as admitted:
            # A stream holds its admission slot until its last byte: it is work in flight.
            await admitted.enter_async_context(runtime.admission.slot())
            try:
                resolved = engine.resolve(body.model)
            except ResidencyError as err:
                raise ApiError(
                    404,
                    f"model {body.model!r} is not served here; use one of {', '.join(engine.names())}",
                    code="model_not_found",
                    param="model",
                ) from err
            name = resolved
            # The engine knows a model's voices before its first load (hibari lists what is on disk),
            # so a wrong voice is refused without loading anything.
            voice = choose_voice(body.voice, engine.voices(name), engine.spec(name).default_voice, name)
            headers: dict[str, Any] = {"X-Model": name}
            if streamed:
                stream = SpeechStream(
                    engine, runtime, name, body.input, voice, body.speed, body.response_format
                )
                first = await stream.start(request)
                headers["X-Sample-Rate"] = str(stream.sample_rate)
                # From here the response owns the stream and the slot; both end with its last byte.
                stream.then_close(admitted.pop_all())
                response: Response
                if body.stream_format == "sse":
                    response = SseSpeechResponse(stream, first, headers)
                else:
                    response = AudioStreamResponse(
                        stream, first, audio.MEDIA_TYPES[body.response_format], headers
                    )
            else:
                content, sample_rate = await run_for_client(
                    request,
                    runtime,
                    name,
                    _speak,
                    engine,
                    name,
                    body.input,
                    voice,
                    body.speed,
                    body.response_format,
                )
                headers["X-Sample-Rate"] = str(sample_rate)
                media_type = audio.MEDIA_TYPES[body.response_format]
                response = Response(content, media_type=media_type, headers=headers)
        status = "ok"
    except ClientGone:
        status = "disconnected"  # nobody to answer: not `ok`, and not an error of ours
        return Response(status_code=499)
    finally:
        # A stream's figure is its time to first audio here; residency_speech_streams_total has its end.
        runtime.metrics.request_seconds.labels(name, body.response_format, status).observe(
            time.perf_counter() - started
        )
    return response
