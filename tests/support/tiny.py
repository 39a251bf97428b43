"""A tiny deterministic torch "TTS" (`support.tiny:factory`), sized in bytes for bench.

Text -> per-character embeddings -> two Linear layers and a Conv1d -> 160 samples per character at
16 kHz, shaped by a registered buffer. Every parameter and buffer touches the output, so a weight that
comes back wrong after offload/restore changes the samples.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

SAMPLE_RATE = 16000
HOP = 160
_BALLAST_MIXED = 4096  # elements of the ballast that enter the output (the rest only takes space)


def _window() -> torch.Tensor:
    # A Hann window by hand: torch.hann_window on the meta device pulls in a slow decomposition import.
    n = torch.arange(HOP, dtype=torch.float32)
    return 1.0 - 0.5 * torch.cos(2 * math.pi * n / (HOP - 1))


class TinyTTS(nn.Module):
    sample_rate = SAMPLE_RATE
    voices = ("alto", "bass")

    def __init__(
        self,
        size_bytes: int = 0,
        delay_seconds: float = 0.0,
        hidden: int = 32,
        seed: int = 0,
        concurrency: int = 1,
    ) -> None:
        super().__init__()
        self.delay_seconds = float(delay_seconds)
        self.max_concurrency = int(concurrency)  # requests the engine may run at once (dispatch.py)
        self.in_flight = self.peak_in_flight = 0  # how many ran at once (tests of concurrency)
        self._count = threading.Lock()
        self.resident = True  # False between residency_offload() and residency_restore()
        self.embed = nn.Embedding(256, hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, HOP)
        self.conv = nn.Conv1d(1, 1, kernel_size=9, padding=4)
        self.window: torch.Tensor
        self.register_buffer("window", _window())
        base = sum(p.numel() * 4 for p in self.parameters()) + HOP * 4
        extra = max(0, int(size_bytes) - base) // 4
        # Ballast makes the model as big as asked (bench: 1/4/16 GB) without slowing synthesis.
        self.ballast = nn.Parameter(torch.empty(extra), requires_grad=False)
        self._init(seed)

    def _init(self, seed: int) -> None:
        if self.embed.weight.device.type == "meta":
            return  # a skeleton: the weights arrive from a shared host copy
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            # In name order, so the weights depend only on the seed.
            for _, p in sorted(self.named_parameters(), key=lambda kv: kv[0]):
                if p is self.ballast:
                    continue
                p.copy_(torch.rand(p.shape, generator=g) * 0.2 - 0.1)
            n = self.ballast.numel()
            head = min(n, _BALLAST_MIXED)
            if head:
                self.ballast[:head].copy_(torch.rand(head, generator=g) * 1e-3)
            if n > head:
                self.ballast[head:].fill_(1e-3)

    def forward(self, codes: torch.Tensor, voice: int, speed: float) -> torch.Tensor:
        h = torch.tanh(self.proj(self.embed(codes)))  # (n, hidden)
        frames = torch.tanh(self.out(h)) * self.window  # (n, HOP)
        wave = self.conv(frames.reshape(1, 1, -1)).reshape(-1)
        if self.ballast.numel():
            wave = wave + self.ballast[:_BALLAST_MIXED].sum()
        wave = wave * (0.5 if voice else 1.0)
        if speed != 1.0:
            n = max(1, int(wave.numel() / speed))
            idx = torch.linspace(0, wave.numel() - 1, n, device=wave.device).long()
            wave = wave[idx]
        return torch.clamp(wave, -1.0, 1.0)

    def residency_offload(self) -> None:
        self.resident = False

    def residency_restore(self, device: str) -> None:
        self.resident = True

    def synthesize(self, text: str, voice: str, speed: float) -> tuple[torch.Tensor, int]:
        if text == "peak?":  # lets a test read, even from a worker process, how many ran at once
            return torch.tensor([float(self.peak_in_flight)]), SAMPLE_RATE
        # The engine promises never to offload under a request: break loudly if it ever does.
        if not self.resident:
            raise RuntimeError("TinyTTS.synthesize called while offloaded")
        with self._count:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.delay_seconds:
                time.sleep(self.delay_seconds)  # lets tests hold a request in flight
            return self._speak(text, voice, speed)
        finally:
            with self._count:
                self.in_flight -= 1

    def _speak(self, text: str, voice: str, speed: float) -> tuple[torch.Tensor, int]:
        if not self.resident:
            raise RuntimeError("TinyTTS was offloaded during synthesize")
        dev = self.embed.weight.device
        codes = torch.tensor(list(text.encode("utf-8")), dtype=torch.long, device=dev)
        v = self.voices.index(voice) if voice in self.voices else 0
        return self.forward(codes, v, speed).to("cpu"), SAMPLE_RATE


def factory(**options: Any) -> TinyTTS:
    """`support.tiny:factory`; options: size_bytes, delay_seconds, hidden, seed, concurrency."""
    return TinyTTS(**options)


class PiecesTTS(TinyTTS):
    """TinyTTS with a stream of its own: a piece per word, `delay_seconds` each. Its whole clip is those
    pieces made one after the other, so joined they are exactly it, and it says so (`stream_joins_whole`)."""

    stream_joins_whole = True

    def synthesize_stream(self, text: str, voice: str, speed: float) -> Iterator[tuple[torch.Tensor, int]]:
        for word in text.split() or [text]:
            yield super().synthesize(word, voice, speed)

    def synthesize(self, text: str, voice: str, speed: float) -> tuple[torch.Tensor, int]:
        pieces = [samples for samples, _ in self.synthesize_stream(text, voice, speed)]
        return torch.cat(pieces), SAMPLE_RATE


def pieces_factory(**options: Any) -> PiecesTTS:
    """`support.tiny:pieces_factory`; TinyTTS options (`delay_seconds` is per piece)."""
    return PiecesTTS(**options)


class BatchTTS(TinyTTS):
    """TinyTTS with a batch call (dynamic batching): one `delay_seconds` per batch; records batch sizes.
    Each item's samples equal what `synthesize` gives for it alone."""

    def __init__(self, max_batch_size: int = 8, **options: Any) -> None:
        super().__init__(**options)
        self.max_batch_size = int(max_batch_size)
        self.batches: list[int] = []

    def synthesize_batch(self, requests: list[tuple[str, str, float]]) -> list[tuple[torch.Tensor, int]]:
        self.batches.append(len(requests))
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        return [self._speak(text, voice, speed) for text, voice, speed in requests]

    def synthesize(self, text: str, voice: str, speed: float) -> tuple[torch.Tensor, int]:
        if text == "batches?":  # lets a test read the batch sizes out of a worker process
            return torch.tensor(self.batches, dtype=torch.float32), SAMPLE_RATE
        return super().synthesize(text, voice, speed)


def batch_factory(**options: Any) -> BatchTTS:
    """`support.tiny:batch_factory`; TinyTTS options plus max_batch_size (default 8)."""
    return BatchTTS(**options)


class TinyPlugin:
    """A plug-in that is not an nn.Module: two modules found through `residency_modules()`."""

    sample_rate = SAMPLE_RATE
    voices = ("alto",)

    def __init__(self, **options: Any) -> None:
        self.a = TinyTTS(**options)
        self.b = TinyTTS(seed=1)

    def residency_modules(self) -> list[nn.Module]:
        return [self.a, self.b]

    def synthesize(self, text: str, voice: str, speed: float) -> tuple[torch.Tensor, int]:
        wa, _ = self.a.synthesize(text, voice, speed)
        wb, _ = self.b.synthesize(text, voice, speed)
        return (wa + wb) / 2, SAMPLE_RATE


def plugin_factory(**options: Any) -> TinyPlugin:
    """`support.tiny:plugin_factory`."""
    return TinyPlugin(**options)


class TiedTTS(nn.Module):
    """Weights shared two ways, for the backend's tests: `head.weight` IS `embed.weight` (one Parameter in
    two modules, as `tie_weights()` does) and `down` is a second Parameter viewing `up`'s storage
    transposed; plus a non-persistent buffer (`window`) and an int64 buffer (`steps`), all in `dtype`."""

    sample_rate = SAMPLE_RATE
    voices = ("alto",)

    def __init__(self, dtype: str = "float32", hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        dt = getattr(torch, dtype)
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(256, hidden, dtype=dt)
        self.head = nn.Linear(hidden, 256, bias=False, dtype=dt)
        self.head.weight = self.embed.weight
        w = (torch.rand(hidden, HOP, generator=g) - 0.5).to(dt)
        self.up = nn.Parameter(w, requires_grad=False)
        self.down = nn.Parameter(w.t(), requires_grad=False)
        self.window: torch.Tensor
        self.steps: torch.Tensor
        self.register_buffer("window", _window().to(dt), persistent=False)
        self.register_buffer("steps", torch.arange(4))
        with torch.no_grad():
            self.embed.weight.copy_((torch.rand(256, hidden, generator=g) - 0.5).to(dt))

    def synthesize(self, text: str, voice: str, speed: float) -> tuple[torch.Tensor, int]:
        dev = self.embed.weight.device
        codes = torch.tensor(list(text.encode("utf-8")), dtype=torch.long, device=dev)
        h = torch.tanh(self.embed(codes))  # (n, hidden)
        frames = torch.tanh(h @ self.up) * self.window  # (n, HOP)
        score = self.head(frames @ self.down).mean(dim=1, keepdim=True)  # (n, 1)
        wave = (frames * (1 + score)).reshape(-1) * (self.steps.sum() / 6)
        return wave.float().clamp(-1.0, 1.0).to("cpu"), SAMPLE_RATE


def tied_factory(**options: Any) -> TiedTTS:
    """`support.tiny:tied_factory`; options: dtype (float32|float16|bfloat16), hidden, seed."""
    return TiedTTS(**options)
