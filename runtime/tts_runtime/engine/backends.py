"""The memory verbs every backend implements, and how a `ModelSpec` picks its backend."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tts_contract import ModelSpec
from tts_runtime.engine.errors import InvalidRequestError
from tts_runtime.engine.segmenter import split

MIN_SPEED, MAX_SPEED = 0.25, 4.0
FADE_SECONDS = 0.005  # at each join of runtime-made segments: long enough to remove a click, inaudible

Chunks = Generator[tuple[np.ndarray, int], None, None]  # float32 mono samples and their rate, in order


class GpuOutOfMemory(Exception):
    """Device memory ran out during load/restore; the backend has already rolled back to its host copy."""


@dataclass
class Stats:
    """What a backend holds right now, measured by the process that holds it."""

    device: str
    vram_bytes: int = 0
    host_bytes: int = 0
    # What the weights take on the device, i.e. what a load or restore must find free; 0 means the host
    # copy's size (torch). Less than host_bytes when the host also keeps helpers (hibari's G2P).
    device_bytes: int = 0
    voices: list[str] = field(default_factory=list)
    sample_rate: int = 0
    pinned_bytes: int = 0  # of host_bytes, what is page-locked for the device (exactly, no rounding)
    pin_seconds: float = 0.0  # what registering the pinned memory cost (exit-worker: on every restore)
    context_bytes: int = 0  # the process's CUDA context, measured when it was created; in vram_bytes
    # Device bytes beyond the weights at the peak seen so far (activations, library workspaces); the
    # budget adds it to the weights before saying a model fits.
    workspace_bytes: int = 0
    # This process as NVML names it: in a container without hostPID, NVML lists host PIDs; the worker
    # finds its own by the entry that appeared when it created its context. Empty: not known.
    gpu_pids: list[int] = field(default_factory=list)
    note: str | None = None  # something the report should say (hibari fell back to CPU)


@dataclass
class Blob:
    """One piece of a host copy, for moving it into shared memory (`exit-worker` mode)."""

    key: str
    meta: dict[str, Any]
    data: memoryview


class Backend(Protocol):
    """A model and where its weights are. Every verb either completes or rolls back.

    Optional: `max_concurrency` (requests it takes at once, default 1), `synthesize_batch(requests)` with
    `max_batch_size` (dynamic batching), and `stream_joins_whole = True` where the pieces of
    `synthesize_stream`, joined, are exactly what `synthesize` returns (a whole request then stops between
    pieces when its client goes away); `engine/dispatch.py` reads them.
    """

    def load(self) -> None: ...  # build it, keep a host copy, put a working copy on the device

    def offload(self) -> None: ...  # drop the working copy, keep the host copy

    def restore(self) -> None: ...  # working copy back on the device from the host copy

    def synthesize(self, text: str, voice: str | None, speed: float) -> tuple[np.ndarray, int]: ...

    # The same audio in pieces, each yielded as soon as it exists (errors before the first piece for a
    # bad request). Closing the generator early stops the synthesis of the rest.
    def synthesize_stream(self, text: str, voice: str | None, speed: float) -> Chunks: ...

    def stats(self) -> Stats: ...

    def host_blobs(self) -> list[Blob]: ...  # the host copy as raw bytes (for shared memory)

    def adopt_host(self, blobs: list[Blob]) -> None: ...  # rebuild in `cpu` state from host_blobs' output

    def close(self) -> None: ...  # drop everything


def resolve_factory(ref: str) -> Callable[..., Any]:
    """'package.module:callable' -> the callable, with an error that names what is missing."""
    mod_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise ImportError(f"factory {ref!r}: cannot import module {mod_name!r} ({e})") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"factory {ref!r}: module {mod_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise TypeError(f"factory {ref!r} is not callable")
    return obj  # type: ignore[no-any-return]


def check_request(
    text: str,
    voice: str | None,
    speed: float,
    voices: list[str],
    speeds: tuple[float, float] = (MIN_SPEED, MAX_SPEED),
    model: str = "this model",
) -> None:
    """`speeds`: the range the model really follows (a model that saturates must say so, not ignore it)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequestError("input text is empty; send the text to speak in 'input'")
    low, high = speeds
    if not low <= float(speed) <= high:
        raise InvalidRequestError(
            f"speed {speed} is beyond what {model} can do; use a speed from {low:g} to {high:g}"
        )
    if voice is not None and voices and voice not in voices:
        raise InvalidRequestError(f"unknown voice {voice!r}; this model has: {', '.join(voices)}")


def as_samples(samples: Any) -> np.ndarray:
    """A model's output as a float32 mono 1-D array."""
    if hasattr(samples, "detach"):  # a torch tensor
        samples = samples.detach().to("cpu").float().numpy()
    arr = np.asarray(samples, dtype=np.float32)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    return arr


def segmented(text: str, synthesize: Callable[[str], tuple[np.ndarray, int]]) -> Chunks:
    """Stream any model: synthesize the text segment by segment (see `segmenter`), edges of each join
    faded so the pieces play as one clip without a click."""
    segments = split(text)
    for i, seg in enumerate(segments):
        samples, rate = synthesize(seg.text)
        yield fade_edges(as_samples(samples), rate, i > 0, i < len(segments) - 1), rate


def fade_edges(samples: np.ndarray, rate: int, fade_in: bool, fade_out: bool) -> np.ndarray:
    """A raised-cosine fade of FADE_SECONDS at the start and/or end (a copy; the input is untouched)."""
    n = min(samples.size // 2, max(1, int(rate * FADE_SECONDS)))
    if n < 2 or not (fade_in or fade_out):
        return samples
    ramp = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n))).astype(np.float32)
    out = samples.copy()
    if fade_in:
        out[:n] *= ramp
    if fade_out:
        out[-n:] *= ramp[::-1]
    return out


def make_backend(spec: ModelSpec, device: str) -> Backend:
    """The backend for a spec, executing on `device` ("cpu" or "cuda:N")."""
    if spec.backend == "hibari":
        from tts_runtime.engine.hibari_backend import HibariBackend

        return HibariBackend(spec, device)
    from tts_runtime.engine.torch_backend import TorchBackend

    return TorchBackend(spec, device)
