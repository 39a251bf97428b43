"""`POST /v1/audio/speech`: OpenAI's speech API on top of the residency engine."""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tts_runtime.engine import Engine
from tts_runtime.engine.errors import ResidencyError
from tts_runtime.server import audio
from tts_runtime.server.errors import ApiError
from tts_runtime.server.inflight import ClientGone, run_for_client
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

    @field_validator("stream_format")
    @classmethod
    def _audio_only(cls, value: str) -> str:
        if value != "audio":
            raise ValueError("stream_format 'sse' is not supported; use 'audio' (the default)")
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
    gone: threading.Event, engine: Engine, name: str, text: str, voice: str | None, speed: float, fmt: str
) -> tuple[bytes, int]:
    """Lease, synthesize and encode in one worker-thread hop (each hop costs latency on small requests).
    The lease ends before encoding, so an offload after use overlaps the encoding. A client that left
    while this waited for its model costs no synthesis."""
    with engine.lease(name) as lease:
        if gone.is_set():
            raise ClientGone(f"the client of a {name} request disconnected")
        out = lease.synthesize(text, voice=voice, speed=speed)
    return audio.encode(out.samples, out.sample_rate, fmt), out.sample_rate


@router.post("/v1/audio/speech", response_class=Response, tags=["speech"])
async def create_speech(
    body: SpeechRequest, request: Request, engine: EngineDep, runtime: RuntimeDep
) -> Response:
    started = time.perf_counter()
    # Unresolved names never become a label: a client must not grow the metric's cardinality.
    name = "unknown"
    status = "error"
    try:
        async with runtime.admission.slot():
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
            content, sample_rate = await run_for_client(
                request, runtime, name, _speak, engine, name, body.input, voice, body.speed,
                body.response_format,
            )
        status = "ok"
    except ClientGone:
        status = "disconnected"  # nobody to answer: not `ok`, and not an error of ours
        return Response(status_code=499)
    finally:
        runtime.metrics.request_seconds.labels(name, body.response_format, status).observe(
            time.perf_counter() - started
        )
    headers: dict[str, Any] = {"X-Sample-Rate": str(sample_rate), "X-Model": name}
    return Response(content, media_type=audio.MEDIA_TYPES[body.response_format], headers=headers)
