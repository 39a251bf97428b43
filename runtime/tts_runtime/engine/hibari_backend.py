"""Hibari backend: ONNX bytes kept in RAM; the device session is built on load/restore, dropped on offload.

Each hibari voice is a whole model (its own ONNX file); only voices bundled in the package or already in
hibari's cache are offered, because a runtime may have no network.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from tts_runtime.engine.backends import Blob, GpuOutOfMemory, Stats, as_samples, check_request
from tts_runtime.engine.spec import ModelSpec

SAMPLE_RATE = 24000


def available_voices() -> list[str]:
    """Voices usable offline: bundled in the package or already downloaded."""
    from hibari.voices import VOICES, voice_path

    out = []
    for name in VOICES:
        try:
            voice_path(name, download_missing=False)
        except (FileNotFoundError, ValueError):
            continue
        out.append(name)
    return out


class HibariBackend:
    def __init__(self, spec: ModelSpec, device: str) -> None:
        self.spec = spec
        self.want_cuda = device.startswith("cuda")
        self.device_id = int(device.partition(":")[2] or 0) if self.want_cuda else 0
        self.model_bytes: dict[str, bytes] = {}
        self.engines: dict[str, Any] = {}  # voice -> hibari.Hibari with a live session
        self.g2p: dict[bool, Any] = {}  # british? -> G2P, kept across offload (it is host-only)
        self.providers: list[str] = ["CPUExecutionProvider"]
        self.seed: int | None = spec.options.get("seed", 0)
        self.threads = int(spec.options.get("threads", 1))

    def _voices(self) -> list[str]:
        have = available_voices()
        wanted = self.spec.voices or have
        missing = [v for v in wanted if v not in have]
        if missing:
            raise RuntimeError(
                f"hibari voices {missing} are not in the package or cache (no downloads at run time); "
                f"available: {have}. Pre-download them into HIBARI_HOME in the image."
            )
        return list(wanted)

    def load(self) -> None:
        from hibari.voices import voice_path

        self.model_bytes = {}
        for v in self._voices():
            with open(voice_path(v, download_missing=False), "rb") as f:
                self.model_bytes[v] = f.read()
        self.restore()

    def adopt_host(self, blobs: list[Blob]) -> None:
        self.model_bytes = {b.key: bytes(b.data) for b in blobs}
        self.engines = {}

    def _session(self, model: bytes) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = self.threads
        so.log_severity_level = 3
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.want_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            cuda = {
                "device_id": self.device_id,
                # Grow the arena by what is asked, not the next power of two: less GPU memory held.
                "arena_extend_strategy": "kSameAsRequested",
                # Exhaustive search may pick other kernels in the next session: a restored model
                # must give the same audio as before its offload.
                "cudnn_conv_algo_search": "DEFAULT",
            }
            providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
        sess = ort.InferenceSession(model, so, providers=providers)
        # What the session really got: onnxruntime falls back to CPU quietly (e.g. no cuDNN).
        self.providers = list(sess.get_providers())
        return sess

    def restore(self) -> None:
        from hibari import Hibari
        from hibari.tts import ASSETS
        from hibari.voices import VOICES

        with open(os.path.join(ASSETS, "vocab.json"), encoding="utf-8") as f:
            vocab = json.load(f)
        engines: dict[str, Any] = {}
        try:
            for v, model in self.model_bytes.items():
                # Hibari() would build a CPU session from the file; build ours from the bytes instead.
                h = Hibari.__new__(Hibari)
                h.voice, h.model_path, h.vocab = v, f"<memory:{v}>", vocab
                h.sess = self._session(model)
                british = bool(VOICES[v]["british"])
                h._g2p = self.g2p.get(british)
                engines[v] = h
        except Exception as e:
            engines.clear()
            if "out of memory" in str(e).lower() or "Failed to allocate" in str(e):
                raise GpuOutOfMemory(f"out of GPU memory building the hibari session: {e}") from None
            raise
        self.engines = engines

    def offload(self) -> None:
        self.engines = {}  # the G2P stays in self.g2p (host RAM) for the next restore

    def synthesize(self, text: str, voice: str | None, speed: float) -> tuple[np.ndarray, int]:
        voices = list(self.model_bytes)
        check_request(text, voice, speed, voices)
        voice = voice or self.spec.default_voice or ("heart" if "heart" in voices else voices[0])
        h = self.engines[voice]
        audio = h(text, speed=float(speed), seed=self.seed)
        if h._g2p is not None:
            from hibari.voices import VOICES

            self.g2p[bool(VOICES[voice]["british"])] = h._g2p
        return as_samples(audio), SAMPLE_RATE

    def stats(self) -> Stats:
        on_gpu = bool(self.engines) and self.providers[0] == "CUDAExecutionProvider"
        return Stats(
            device="cuda:0" if on_gpu else "cpu",
            vram_bytes=0,  # onnxruntime does not say; the engine measures the worker with NVML
            host_bytes=sum(len(b) for b in self.model_bytes.values()),
            voices=list(self.model_bytes),
            sample_rate=SAMPLE_RATE,
        )

    def host_blobs(self) -> list[Blob]:
        return [Blob(v, {}, memoryview(b)) for v, b in self.model_bytes.items()]

    def close(self) -> None:
        self.engines = {}
        self.model_bytes = {}
        self.g2p = {}
