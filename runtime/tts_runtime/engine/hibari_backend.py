"""Hibari backend: ONNX bytes kept in RAM; the device session is built on load/restore, dropped on offload.

Each hibari voice is a whole model (its own ONNX file); only voices bundled in the package or already in
hibari's cache are offered, because a runtime may have no network.

Restore is cheap because everything host-only (vocab, G2P with its lexicons, tagger and OOV net, which
always runs on CPU) lives across offload, and the session is rebuilt from bytes ONNX Runtime already
optimised, without planning static memory reuse (measured on 2 CPU cores: 136 ms -> ~20 ms).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from typing import Any

import numpy as np

from tts_contract import ModelSpec
from tts_runtime.engine.backends import Blob, Chunks, GpuOutOfMemory, Stats, as_samples, check_request
from tts_runtime.engine.gpu import GpuIdentity, identify_once

log = logging.getLogger(__name__)
SAMPLE_RATE = 24000
# Measured: durations follow 1/speed within ~10% from 0.25 to 2.0; beyond, the model's minimum phoneme
# length wins (4.0 gives 2.1x, not 4x). A request outside is refused rather than silently slower.
SPEED_RANGE = (0.25, 2.0)
CPU_ONLY = ("CPUExecutionProvider",)
OPTIMISED = "optimised"  # Blob meta kind of ONNX Runtime's optimised graph of a voice
_G2P_BYTES: dict[bool, int] = {}  # british? -> host bytes one G2P took when this process built it
CUDA = "CUDAExecutionProvider"
# A standby's warm-up: one sentence of everyday length (a session's first run is ~2x a warm one).
WARM_UP_TEXT = "The quick brown fox jumps over the lazy dog, and then it rests for a while."
_PRELOADED: list[bool] = []  # onnxruntime.preload_dlls() ran in this process


def preload_cuda_libraries(ort: Any) -> None:
    """Make the CUDA/cuDNN libraries of the nvidia-* wheels (torch's cu128 brings them) loadable by
    onnxruntime-gpu, once per process; a failure shows as the CPU fallback's reason."""
    if _PRELOADED:
        return
    _PRELOADED.append(True)
    preload = getattr(ort, "preload_dlls", None)
    if callable(preload):
        try:
            preload()
        except Exception as e:
            log.warning("onnxruntime.preload_dlls() failed: %s", e)


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


def rss_bytes() -> int:
    """This process's resident memory now (Linux); 0 where /proc is not there."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _is_oom(e: Exception) -> bool:
    return "out of memory" in str(e).lower() or "Failed to allocate" in str(e)


class HibariBackend:
    # Its stream is the same sentences through the same generator: joined, byte for byte what `synthesize`
    # returns (test_backend_hibari), so a whole request runs as the stream and stops when its client leaves.
    stream_joins_whole = True

    def __init__(self, spec: ModelSpec, device: str) -> None:
        self.spec = spec
        self.want_cuda = device.startswith("cuda")
        self.device_id = int(device.partition(":")[2] or 0) if self.want_cuda else 0
        self.model_bytes: dict[str, bytes] = {}
        self._graphs_ready = False  # a standby read and optimised the voices ahead: the load skips that
        # voice -> the graph ONNX Runtime optimised for `optimised_for` (CPU only: a CUDA-optimised graph
        # carries Memcpy nodes that fail to load again, onnxruntime#11348).
        self.optimised: dict[str, bytes] = {}
        self.optimised_for: tuple[str, ...] = ()
        self.engines: dict[str, Any] = {}  # voice -> hibari.Hibari with a live session
        # Host-only, kept across offload: british? -> G2P (lexicons, tagger, OOV session on CPU); vocab.
        self.g2p: dict[bool, Any] = {}
        self.vocab: dict[str, int] | None = None
        self.host_side_bytes = 0
        self.providers: list[str] = ["CPUExecutionProvider"]
        self.note: str | None = None  # why a model asked to run on CUDA runs on CPU
        self.identity = GpuIdentity()
        self.seed: int | None = spec.options.get("seed", 0)
        self.threads = int(spec.options.get("threads", 1))
        # Requests in flight at once: an ONNX Runtime session may be run from several threads, and the
        # G2P keeps no per-call state. One per core by default (each session run uses `threads` cores).
        self.max_concurrency = int(spec.options.get("concurrency", min(8, os.cpu_count() or 1)))

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
        if not self._graphs_ready:
            self._read_and_optimise()
        self._graphs_ready = False  # a later load reads the files again
        self._host_side()
        self.restore()

    def _read_and_optimise(self) -> None:
        from hibari.voices import voice_path

        model_bytes: dict[str, bytes] = {}
        for v in self._voices():
            with open(voice_path(v, download_missing=False), "rb") as f:
                model_bytes[v] = f.read()
        # Optimised once, for the providers this model runs on: the CPU gets ONNX Runtime's whole
        # optimisation; CUDA the provider-independent (basic) level, since a CUDA-optimised graph carries
        # Memcpy nodes that do not load again (onnxruntime#11348): its restore runs only the CUDA passes.
        optimised_for = self._requested()
        self.optimised = {v: self._optimise(m, optimised_for) for v, m in model_bytes.items()}
        self.model_bytes, self.optimised_for = model_bytes, optimised_for

    def adopt_host(self, blobs: list[Blob]) -> None:
        self.model_bytes = {b.key: bytes(b.data) for b in blobs if b.meta.get("kind") != OPTIMISED}
        self.optimised = {b.meta["voice"]: bytes(b.data) for b in blobs if b.meta.get("kind") == OPTIMISED}
        provs = [tuple(b.meta["providers"]) for b in blobs if b.meta.get("kind") == OPTIMISED]
        self.optimised_for = provs[0] if provs else ()
        self.engines = {}

    def prepare(self, first_load: bool = False) -> None:
        """The host-only part of a load, ahead of it (in a standby worker): vocab and G2P, no device. For
        a first load on a CPU device also the optimised graphs, in a thread while the G2P builds: ONNX
        Runtime releases the GIL while it optimises (measured: 0.63 s one after the other, 0.41 s so)."""
        graphs: threading.Thread | None = None
        failed: list[BaseException] = []

        def read_and_optimise() -> None:
            try:
                self._read_and_optimise()
            except Exception as e:  # the load does it again and reports it
                failed.append(e)

        if first_load and not self.want_cuda:
            graphs = threading.Thread(target=read_and_optimise, name="optimise", daemon=True)
            graphs.start()
        try:
            self._host_side(self._voices())
        finally:
            if graphs is not None:
                graphs.join()
                self._graphs_ready = not failed

    def _host_side(self, voices: list[str] | None = None) -> None:
        """Vocab and one G2P per accent (OOV net included), built once; a no-op when they are there."""
        from hibari.g2p import G2P
        from hibari.tts import ASSETS
        from hibari.voices import VOICES

        if self.vocab is None:
            with open(os.path.join(ASSETS, "vocab.json"), encoding="utf-8") as f:
                self.vocab = json.load(f)
        for british in sorted({bool(VOICES[v]["british"]) for v in (voices or self.model_bytes)}):
            if british not in self.g2p:
                # Its bytes are measured where they are made (resident memory grown by the build), not by
                # walking ~55 MB of Python objects afterwards (that walk cost 0.3 s per load).
                before = rss_bytes()
                g = G2P(british=british)
                g.oov  # noqa: B018 - builds the OOV session now, not in the first request that needs it
                self.g2p[british] = g
                _G2P_BYTES.setdefault(british, max(0, rss_bytes() - before))
        self.host_side_bytes = sum(_G2P_BYTES.get(b, 0) for b in self.g2p)

    def _options(self, level: Any) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = self.threads
        so.log_severity_level = 3
        so.graph_optimization_level = level
        # Planning static buffer reuse costs ~60% of a session build; the arena reuses freed blocks
        # anyway (measured: same peak RSS, same run time, same samples).
        so.enable_mem_reuse = False
        return so

    def _providers(self) -> list[Any]:
        import onnxruntime as ort

        if self.want_cuda:
            preload_cuda_libraries(ort)
        if self.want_cuda and CUDA in ort.get_available_providers():
            cuda = {
                "device_id": self.device_id,
                # Grow the arena by what is asked, not the next power of two: less GPU memory held.
                "arena_extend_strategy": "kSameAsRequested",
                # Exhaustive search may pick other kernels in the next session: a restored model
                # must give the same audio as before its offload.
                "cudnn_conv_algo_search": "DEFAULT",
            }
            return [(CUDA, cuda), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _requested(self) -> tuple[str, ...]:
        return tuple(p if isinstance(p, str) else p[0] for p in self._providers())

    def _optimise(self, model: bytes, providers: tuple[str, ...]) -> bytes:
        """The graph optimised for `providers`, as ONNX bytes (written once, read): every CPU optimisation
        for the CPU, the provider-independent ones for CUDA."""
        import onnxruntime as ort

        levels = ort.GraphOptimizationLevel
        level = levels.ORT_ENABLE_ALL if providers == CPU_ONLY else levels.ORT_ENABLE_BASIC
        with tempfile.TemporaryDirectory(prefix="hibari-") as tmp:
            so = self._options(level)
            so.optimized_model_filepath = os.path.join(tmp, "optimised.onnx")
            ort.InferenceSession(model, so, providers=list(CPU_ONLY))
            with open(so.optimized_model_filepath, "rb") as f:
                return f.read()

    def _session(self, voice: str) -> Any:
        import onnxruntime as ort

        providers = self._providers()
        requested = self._requested()
        levels = ort.GraphOptimizationLevel
        if self.optimised.get(voice) is not None and requested == self.optimised_for:
            # Optimised already, for these providers: the CPU graph needs nothing more; CUDA only its
            # provider-specific passes (the basic ones find nothing left to do).
            model = self.optimised[voice]
            level = levels.ORT_DISABLE_ALL if requested == CPU_ONLY else levels.ORT_ENABLE_ALL
        else:
            model, level = self.model_bytes[voice], levels.ORT_ENABLE_ALL
        made: list[Any] = []

        def build() -> int | None:
            made.append(ort.InferenceSession(model, self._options(level), providers=providers))
            return None  # onnxruntime does not say what the device has free

        if CUDA in requested and not self.identity.pids and not self.identity.context_bytes:
            # The first CUDA session creates this process's context: find which NVML process it is.
            self.identity = identify_once(self.device_id, build)
        else:
            build()
        sess = made[0]
        # What the session really got: onnxruntime falls back to CPU quietly (e.g. no cuDNN).
        self.providers = list(sess.get_providers())
        self.note = self._fallback_reason(ort)
        return sess

    def _fallback_reason(self, ort: Any) -> str | None:
        if not self.want_cuda or self.providers[0] == CUDA:
            return None
        if CUDA not in ort.get_available_providers():
            why = "this onnxruntime has no CUDA provider (the image needs onnxruntime-gpu)"
        else:
            why = "the CUDA provider did not load (CUDA 12 / cuDNN 9 libraries missing?)"
        return f"asked to run on cuda:{self.device_id}, hibari runs on CPU: {why}"

    def restore(self) -> None:
        from hibari import Hibari
        from hibari.voices import VOICES

        self._host_side()  # only does work in a fresh worker that adopted the host copy
        engines: dict[str, Any] = {}
        try:
            for v in self.model_bytes:
                # Hibari() would build a CPU session and a G2P from files; give it ours instead.
                h = Hibari.__new__(Hibari)
                h.voice, h.model_path, h.vocab = v, f"<memory:{v}>", self.vocab
                h._g2p = self.g2p[bool(VOICES[v]["british"])]
                h.sess = self._session(v)
                engines[v] = h
        except Exception as e:
            engines.clear()
            if _is_oom(e):
                raise GpuOutOfMemory(f"out of GPU memory building the hibari session: {e}") from None
            raise
        self.engines = engines

    def warm_up(self) -> None:
        """One synthesis per voice, discarded: ONNX Runtime grows its arena and the G2P its caches in a
        session's first run, which otherwise the first request pays. The seed is per call: no state."""
        for engine in self.engines.values():
            engine(WARM_UP_TEXT, speed=1.0, seed=self.seed)

    def offload(self) -> None:
        self.engines = {}  # only the sessions go; vocab, G2P and OOV net stay in host RAM

    def _engine(self, text: str, voice: str | None, speed: float) -> Any:
        voices = list(self.model_bytes)
        check_request(text, voice, speed, voices, SPEED_RANGE, f"model {self.spec.name!r}")
        return self.engines[voice or self.spec.default_voice or ("heart" if "heart" in voices else voices[0])]

    def synthesize(self, text: str, voice: str | None, speed: float) -> tuple[np.ndarray, int]:
        audio = self._engine(text, voice, speed)(text, speed=float(speed), seed=self.seed)
        return as_samples(audio), SAMPLE_RATE

    def synthesize_stream(self, text: str, voice: str | None, speed: float) -> Chunks:
        """hibari's stream, one array per sentence; joined, exactly what `synthesize` returns. Not
        `Hibari.stream`: it phonemizes the whole text before its first sentence (90 ms for 4,096
        characters, measured), so here the G2P runs sentence by sentence, the same chunks in the same
        order from the same generator."""
        engine = self._engine(text, voice, speed)
        rng = np.random.default_rng(self.seed)
        for sentence in engine.split_sentences(text):
            for phonemes in engine.phonemize(sentence):
                yield as_samples(engine.from_ids(engine.ids(phonemes), float(speed), rng)), SAMPLE_RATE

    def stats(self) -> Stats:
        on_gpu = bool(self.engines) and self.providers[0] == CUDA
        kept = sum(len(b) for b in self.model_bytes.values()) + sum(len(b) for b in self.optimised.values())
        return Stats(
            device=f"cuda:{self.device_id}" if on_gpu else "cpu",
            vram_bytes=0,  # onnxruntime does not say; the engine measures the worker with NVML
            host_bytes=kept + self.host_side_bytes,
            device_bytes=sum(len(b) for b in self.model_bytes.values()),
            voices=list(self.model_bytes),
            sample_rate=SAMPLE_RATE,
            gpu_pids=list(self.identity.pids),
            note=self.note,
        )

    def host_blobs(self) -> list[Blob]:
        out = [Blob(v, {"kind": "onnx"}, memoryview(b)) for v, b in self.model_bytes.items()]
        meta = {"kind": OPTIMISED, "providers": list(self.optimised_for)}
        opt = [
            Blob(f"{v}@{OPTIMISED}", {**meta, "voice": v}, memoryview(o)) for v, o in self.optimised.items()
        ]
        return out + opt

    def close(self) -> None:
        self.engines = {}
        self.model_bytes, self.optimised = {}, {}
        self.g2p, self.vocab, self.host_side_bytes = {}, None, 0
