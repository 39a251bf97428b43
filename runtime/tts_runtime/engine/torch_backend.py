"""Torch backend: a host copy kept for the model's life, a working copy on the device that offload drops.

Inference never changes weights, so offload copies nothing back: it points every parameter and buffer at
its host tensor and frees the device storage. Restore allocates device tensors and copies host→device
(non-blocking from pinned memory, then one synchronize). The unit moved is a *storage*, not a tensor:
parameters and buffers that share memory (tied weights, views) are views of one host block and of one
device block, so they stay tied after every restore. Which modules move (the plug-in rule): the object
itself if it is an `nn.Module`; else the modules its `residency_modules()` returns; else every
`nn.Module` attribute of the object. Optional hooks `residency_offload()` and `residency_restore(device)`
let a plug-in move anything else it owns.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tts_contract import ModelSpec
from tts_runtime.engine.backends import (
    MAX_SPEED,
    MIN_SPEED,
    Blob,
    Chunks,
    GpuOutOfMemory,
    Stats,
    as_samples,
    check_request,
    resolve_factory,
    segmented,
)
from tts_runtime.engine.gpu import GpuIdentity, identify_once
from tts_runtime.engine.host_memory import CudaHostPinner, HostPinner, PinnedRegion

log = logging.getLogger(__name__)
_ALIGN = 64  # a block starts on a multiple of every element size, so each view's offset is whole


@dataclass
class _Member:
    """One tensor object (a parameter or a buffer), wherever the modules reference it."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int  # in elements of `dtype`, from the start of its block
    places: list[tuple[nn.Module, str]] = field(default_factory=list)
    param: nn.Parameter | None = None  # one Parameter object serves every place of a tied parameter

    def view(self, block: torch.Tensor) -> torch.Tensor:
        """This tensor inside `block` (a flat uint8 tensor: the host copy or the device copy)."""
        # set_() counts the offset in elements of `dtype`; a block may start inside a larger storage.
        start = block.storage_offset() // self.dtype.itemsize + self.offset
        return torch.empty(0, dtype=self.dtype, device=block.device).set_(
            block.untyped_storage(), start, self.shape, self.stride
        )

    def point_at(self, t: torch.Tensor) -> None:
        if self.param is not None:
            self.param.data = t
        else:
            for owner, leaf in self.places:
                owner._buffers[leaf] = t

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "dtype": str(self.dtype).removeprefix("torch."),
            "shape": list(self.shape),
            "stride": list(self.stride),
            "offset": self.offset,
        }


@dataclass
class _Group:
    """One storage: its bytes at `offset` in the model's arena (host or device) and the tensors viewing it."""

    key: str
    offset: int  # bytes from the start of the arena; a multiple of _ALIGN
    host: torch.Tensor  # its slice of the host arena
    members: list[_Member]

    def point_at(self, arena: torch.Tensor) -> None:
        block = arena[self.offset : self.offset + self.host.numel()]
        for m in self.members:
            m.point_at(m.view(block))


class StaleGraphError(RuntimeError):
    """The model holds CUDA graphs captured against its weights' device addresses, which a move changes."""


class CaptureCounter:
    """Counts CUDA graph captures in this process. A worker serves one model, so they are its graphs;
    tests watch a stand-in class (torch's CUDAGraph cannot be built without CUDA)."""

    def __init__(self) -> None:
        self.count = 0
        self._watched: set[type] = set()

    def watch(self, cls: type) -> None:
        if cls in self._watched:
            return
        self._watched.add(cls)
        original = cls.capture_begin  # type: ignore[attr-defined]
        counter = self

        def capture_begin(graph: Any, *args: Any, **kwargs: Any) -> Any:
            counter.count += 1
            return original(graph, *args, **kwargs)

        cls.capture_begin = capture_begin  # type: ignore[attr-defined]


GRAPHS = CaptureCounter()


def modules_of(obj: Any) -> list[nn.Module]:
    """The modules the backend moves, by the rule in this module's docstring."""
    if isinstance(obj, nn.Module):
        return [obj]
    hook = getattr(obj, "residency_modules", None)
    if callable(hook):
        mods = list(hook())
        bad = [m for m in mods if not isinstance(m, nn.Module)]
        if bad:
            raise TypeError(f"residency_modules() returned non-modules: {bad!r}")
        return mods
    return [v for v in vars(obj).values() if isinstance(v, nn.Module)]


def _resolve_device(device: str) -> torch.device:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.device(device if ":" in device else "cuda:0")
    return torch.device("cpu")


def is_oom(e: BaseException) -> bool:
    """CUDA out of memory, whether the caching allocator or a library (cuBLAS, cuDNN) ran out."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text.lower() or "ALLOC_FAILED" in text)


@dataclass
class _Found:
    """A distinct tensor found in the modules, before it is grouped by storage."""

    key: str
    tensor: torch.Tensor
    places: list[tuple[nn.Module, str]]


def _collect(obj: Any) -> list[_Found]:
    """Every distinct parameter and buffer object (non-persistent buffers included), in module order."""
    found: dict[int, _Found] = {}
    for i, mod in enumerate(modules_of(obj)):
        for kind, items in (
            ("p", mod.named_parameters(remove_duplicate=False)),
            ("b", mod.named_buffers(remove_duplicate=False)),
        ):
            for name, t in items:
                if t is None:
                    continue
                if t.layout != torch.strided:
                    raise TypeError(
                        f"{name}: {t.layout} tensors cannot be offloaded; keep them out of the modules "
                        "and move them in residency_offload()/residency_restore()"
                    )
                prefix, _, leaf = name.rpartition(".")
                owner = mod.get_submodule(prefix) if prefix else mod
                entry = found.setdefault(id(t), _Found(f"{i}.{kind}.{name}", t, []))
                entry.places.append((owner, leaf))
    return list(found.values())


def _storage_id(t: torch.Tensor) -> tuple[str, int]:
    s = t.untyped_storage()
    ptr = s.data_ptr()
    # Meta and empty storages have no address; the storage object's identity is what views share.
    return (str(t.device), ptr) if ptr else ("storage", s._cdata)


def _span(t: torch.Tensor) -> tuple[int, int]:
    """The bytes of its storage a tensor covers: [start, end)."""
    size = t.element_size()
    start = int(t.storage_offset()) * size
    if t.numel() == 0:
        return start, start
    extent = 1 + sum((int(n) - 1) * int(st) for n, st in zip(t.shape, t.stride(), strict=True))
    return start, start + extent * size


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class TorchBackend:
    """The torch backend; `pinner` page-locks the host arena (default: `cudaHostRegister` with CUDA)."""

    def __init__(
        self,
        spec: ModelSpec,
        device: str,
        pinner: HostPinner | None = None,
        working_copy: bool | None = None,
    ) -> None:
        self.spec = spec
        self.device = _resolve_device(device)
        # On a CPU the host copy is what executes: no second copy (one copy of the weights), and offload
        # and restore move nothing. `working_copy=True` keeps a separate CPU copy anyway: the stand-in of a
        # device copy that tests use to exercise the moving code without a GPU.
        self.working_copy = self.cuda if working_copy is None else working_copy
        self.obj: Any = None
        self.groups: list[_Group] = []
        self.host = torch.empty(0, dtype=torch.uint8)  # the host arena: every group, laid out once
        self.work: torch.Tensor | None = None  # the device arena while on the device
        self.on_device = False
        self.pinner = pinner if pinner is not None else (CudaHostPinner() if self.cuda else None)
        self.pinned = PinnedRegion(None, 0, 0)
        self.identity = GpuIdentity()
        if self.cuda:
            GRAPHS.watch(torch.cuda.CUDAGraph)
        self.weights_bytes = 0  # device bytes of the arena, to tell weights from workspace
        self.workspace_bytes = 0
        self._graph_base: int | None = None  # device arena address the model's CUDA graphs captured

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    # -- building ---------------------------------------------------------------------------------
    def _context(self) -> None:
        """This process's CUDA context, made once, knowing which NVML process it is (item: containers)."""
        if not self.cuda or self.identity.context_bytes or self.identity.pids:
            return
        dev = self.device

        def create() -> int:
            torch.cuda.set_device(dev)  # no stray context on GPU 0 when serving on cuda:N
            return int(torch.cuda.mem_get_info(dev)[0])

        self.identity = identify_once(dev.index or 0, create)

    def _build(self, meta: bool = False) -> Any:
        assert self.spec.factory
        factory = resolve_factory(self.spec.factory)
        self._context()
        try:
            if meta:
                # Skeleton only: the weights come from shared memory. Factories that cannot build on
                # the meta device (they read files, use CPU generators...) are built for real instead.
                try:
                    with torch.device("meta"):
                        obj = factory(**self.spec.options)
                except Exception:
                    obj = factory(**self.spec.options)
            else:
                obj = factory(**self.spec.options)
        except Exception as e:
            if is_oom(e):  # a factory that builds on the GPU itself
                raise GpuOutOfMemory(f"CUDA out of memory building {self.spec.name}: {e}") from None
            raise
        if not callable(getattr(obj, "synthesize", None)):
            raise TypeError(
                f"factory {self.spec.factory!r} returned {type(obj).__name__}, which has no "
                "synthesize(text, voice, speed) -> (samples, sample_rate)"
            )
        return obj

    def _pin(self) -> None:
        # One exact-size registration of a plain allocation: pinned as it is, not rounded up to a power
        # of two as torch's pinned allocator would (docs/engine.md).
        self.pinned.release()
        self.pinned = PinnedRegion(self.pinner, self.host.data_ptr(), self.host.numel())

    def load(self) -> None:
        self.obj = self._build()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        found = _collect(self.obj)
        by_storage: dict[tuple[str, int], list[_Found]] = {}
        for f in found:
            by_storage.setdefault(_storage_id(f.tensor), []).append(f)
        del found
        # Lay every storage out once in one arena: one allocation, one registration, one copy to restore.
        plan: list[tuple[list[_Found], list[tuple[int, int]], int, int]] = []
        total = 0
        for fs in by_storage.values():
            spans = [_span(f.tensor) for f in fs]
            lo = min(s for s, _ in spans) // _ALIGN * _ALIGN
            hi = max(e for _, e in spans)
            offset = _align(total)
            plan.append((fs, spans, lo, offset))
            total = offset + max(0, hi - lo)
        by_storage.clear()
        self.host = torch.empty(total, dtype=torch.uint8)
        self.groups = []
        for fs, spans, lo, offset in plan:
            hi = max(e for _, e in spans)
            storage = fs[0].tensor.untyped_storage()
            src = torch.empty(0, dtype=torch.uint8, device=fs[0].tensor.device).set_(
                storage, lo, (max(0, hi - lo),), (1,)
            )
            host = self.host[offset : offset + max(0, hi - lo)]
            host.copy_(src)
            members = []
            for f, (start, _) in zip(fs, spans, strict=True):
                t = f.tensor
                param = t if isinstance(t, nn.Parameter) else None
                m = _Member(
                    f.key, t.dtype, tuple(t.shape), tuple(t.stride()), (start - lo) // t.element_size()
                )
                m.places, m.param = f.places, param
                members.append(m)
            g = _Group(fs[0].key, offset, host, members)
            g.point_at(self.host)  # the factory's tensors are freed as soon as nothing else holds them
            self.groups.append(g)
            del src, storage, fs
        plan.clear()
        self.weights_bytes = total
        if self.cuda:
            # A factory that built on the GPU left its blocks in the caching allocator: give them back,
            # or they would count as this model's workspace and stay reserved.
            self._free_cuda_cache()
        self._pin()
        self.restore()

    def adopt_host(self, blobs: list[Blob]) -> None:
        """Rebuild around a host arena in shared memory; ends in `cpu` (the caller restores).

        The plug-in gets the object graph keep-worker gives it: its own Parameter objects (a cached
        reference stays valid) and real tensors wherever it keeps some outside its modules (its restore
        hook moves them); those are rebuilt by its factory, since only module tensors are shared."""
        self.obj = self._build(meta=True)
        stray = _stray_meta(self.obj)
        if stray is not None:
            log.info("%s keeps %s outside its modules: built for real, not on meta", self.spec.name, stray)
            self.obj = self._build()
        if len(blobs) != 1 or "groups" not in blobs[0].meta:
            raise RuntimeError("shared host copy is not one torch arena; it was made by another version")
        arena = _bytes_tensor(blobs[0].data)
        where: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        for gm in blobs[0].meta["groups"]:
            for m in gm["members"]:
                where[m["key"]] = (gm, m)
        members: dict[str, list[_Member]] = {gm["key"]: [] for gm in blobs[0].meta["groups"]}
        for f in _collect(self.obj):
            if f.key not in where:
                raise RuntimeError(
                    f"shared host copy has no tensor {f.key!r}; the factory built a different model"
                )
            gm, meta = where[f.key]
            shape = tuple(meta["shape"])
            if shape != tuple(f.tensor.shape):
                raise RuntimeError(
                    f"shared host copy of {f.key!r} has shape {shape}, model wants {tuple(f.tensor.shape)}"
                )
            dtype = getattr(torch, meta["dtype"])
            m = _Member(f.key, dtype, shape, tuple(meta["stride"]), int(meta["offset"]), f.places)
            block = arena[gm["offset"] : gm["offset"] + gm["nbytes"]]
            if isinstance(f.tensor, nn.Parameter):
                view = m.view(block)
                if f.tensor.is_meta:
                    # A meta parameter cannot take CPU data in place (`.data =`); swapping keeps the object.
                    new = nn.Parameter(view, requires_grad=f.tensor.requires_grad)
                    torch.utils.swap_tensors(f.tensor, new)  # type: ignore[no-untyped-call]
                else:
                    f.tensor.data = view
                m.param = f.tensor
            members[gm["key"]].append(m)
        self.host = arena
        self.groups = [
            _Group(gm["key"], gm["offset"], arena[gm["offset"] : gm["offset"] + gm["nbytes"]], ms)
            for gm in blobs[0].meta["groups"]
            if (ms := members[gm["key"]])
        ]
        for g in self.groups:
            g.point_at(self.host)
        self.weights_bytes = self.host.numel()
        # The shared block is pageable: registered, the restore copy runs at pinned speed (its cost is
        # in Stats.pin_seconds).
        self._pin()
        self.on_device = False

    # -- memory verbs -----------------------------------------------------------------------------
    def offload(self) -> None:
        if GRAPHS.count and not callable(getattr(self.obj, "residency_recapture", None)):
            raise StaleGraphError(
                f"{self.spec.name} captured {GRAPHS.count} CUDA graph(s) against its weights' "
                "device addresses, which a restore may change; give the model residency_recapture() "
                "(re-capture after a restore) or keep it on the GPU (pinned: true)"
            )
        self._measure_workspace()
        for g in self.groups:
            g.point_at(self.host)
        hook = getattr(self.obj, "residency_offload", None)
        if callable(hook):
            hook()
        self.on_device = False
        self.work = None  # the device arena: one block, freed at once
        if self.cuda:
            self._free_cuda_cache()
            left = torch.cuda.memory_allocated(self.device)
            if left:
                log.warning(
                    "%s: this process still has %d bytes allocated on %s after offload: the model "
                    "holds device tensors outside its parameters and buffers; drop them in "
                    "residency_offload()",
                    self.spec.name,
                    left,
                    self.device,
                )

    def _measure_workspace(self) -> None:
        """Remember the peak device bytes beyond the weights (what requests needed on top of them)."""
        if self.cuda:
            peak = int(torch.cuda.max_memory_reserved(self.device))
            self.workspace_bytes = max(self.workspace_bytes, peak - self.weights_bytes)

    def _free_cuda_cache(self) -> None:
        # The caching allocator keeps freed blocks for reuse; give them back to the driver so other
        # processes (and NVML) see the memory free. cuBLAS keeps a workspace per handle from that same
        # allocator, and cuFFT plans hold device memory: both come back on the next use.
        with contextlib.suppress(Exception):
            clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
            if clear is not None:
                clear()
        with contextlib.suppress(Exception):
            torch.backends.cuda.cufft_plan_cache[self.device.index or 0].clear()
        torch.cuda.empty_cache()

    def restore(self) -> None:
        dev = self.device
        work: torch.Tensor | None = None
        try:
            if self.cuda:
                torch.cuda.set_device(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            if not self.working_copy:
                work = self.host  # on a CPU the host copy is what executes: one copy of the weights
            elif dev.type == "cpu":
                work = self.host.clone()  # the stand-in of a device copy (tests)
            else:
                work = torch.empty(self.host.shape, dtype=torch.uint8, device=dev)
                # One copy for the whole model, asynchronous from pinned memory: the tensors are pointed
                # at their views while the bytes move.
                work.copy_(self.host, non_blocking=self.pinned.pinned)
            for g in self.groups:
                g.point_at(work)
            if self.cuda:
                torch.cuda.synchronize(dev)  # every byte has landed before the model is used
            self.work = work
            hook = getattr(self.obj, "residency_restore", None)
            if callable(hook):
                hook(str(dev))
            self._check_graphs(work)
        except BaseException as e:
            # Nothing half-moved: every tensor back on its host copy, the partial device copy freed
            # (this frame outlives the raise in the traceback: drop its device tensor before freeing).
            work = None
            self.work = None
            if e.__traceback__ is not None and e.__traceback__.tb_next is not None:
                traceback.clear_frames(e.__traceback__.tb_next)  # frames that finished may hold views
            with contextlib.suppress(Exception):
                self._point_home()
            if is_oom(e):
                raise GpuOutOfMemory(
                    f"CUDA out of memory while moving {self.spec.name} to {dev}: {e}"
                ) from None
            raise
        self.on_device = True

    def _point_home(self) -> None:
        for g in self.groups:
            g.point_at(self.host)
        hook = getattr(self.obj, "residency_offload", None)
        if callable(hook):
            hook()
        self.on_device = False
        if self.cuda:
            self._free_cuda_cache()

    def _check_graphs(self, work: torch.Tensor) -> None:
        """CUDA graphs replay the addresses they captured: re-capture when the arena moved."""
        base = work.data_ptr()
        if GRAPHS.count and self._graph_base is not None and base != self._graph_base:
            recapture = getattr(self.obj, "residency_recapture", None)
            if callable(recapture):
                recapture()
            else:
                raise StaleGraphError(
                    f"{self.spec.name}: the weights came back at another address and the model's CUDA "
                    "graphs would replay the old one; give it residency_recapture()"
                )
        self._graph_base = base

    def _voice(self, text: str, voice: str | None, speed: float) -> str:
        voices = self._voices()
        speeds = getattr(self.obj, "speed_range", None) or (MIN_SPEED, MAX_SPEED)
        check_request(text, voice, speed, voices, speeds, f"model {self.spec.name!r}")
        return voice or self.spec.default_voice or (voices[0] if voices else "default")

    def synthesize(self, text: str, voice: str | None, speed: float) -> tuple[np.ndarray, int]:
        voice = self._voice(text, voice, speed)
        with torch.inference_mode():
            samples, sr = self.obj.synthesize(text, voice, float(speed))
        return as_samples(samples), int(sr)

    def synthesize_stream(self, text: str, voice: str | None, speed: float) -> Chunks:
        """The plug-in's own `synthesize_stream(text, voice, speed)` generator if it has one, else the
        runtime's segment-by-segment stream over its `synthesize`."""
        chosen = self._voice(text, voice, speed)
        native = getattr(self.obj, "synthesize_stream", None)
        if callable(native):
            chunks = iter(native(text, chosen, float(speed)))
        else:
            chunks = segmented(text, lambda part: self.obj.synthesize(part, chosen, float(speed)))
        while True:
            with torch.inference_mode():  # per step: the caller runs between steps, outside it
                item = next(chunks, None)
            if item is None:
                return
            samples, rate = item
            yield as_samples(samples), int(rate)

    @property
    def stream_joins_whole(self) -> bool:
        """The plug-in's own stream, joined, is exactly its `synthesize` (it says so: `stream_joins_whole`),
        so a whole request can run as the stream and stop when its client leaves."""
        native = callable(getattr(self.obj, "synthesize_stream", None))
        return native and getattr(self.obj, "stream_joins_whole", False) is True

    @property
    def max_concurrency(self) -> int:
        """What the plug-in declares (`max_concurrency`); 1 when it says nothing."""
        return int(getattr(self.obj, "max_concurrency", 1) or 1)

    @property
    def max_batch_size(self) -> int:
        """Requests per `synthesize_batch` call: the plug-in's `max_batch_size` (8) if it has one, else 1."""
        if not callable(getattr(self.obj, "synthesize_batch", None)):
            return 1
        return int(getattr(self.obj, "max_batch_size", 8) or 1)

    def synthesize_batch(
        self, requests: list[tuple[str, str | None, float]]
    ) -> list[tuple[np.ndarray, int] | Exception]:
        """Several requests in one call of the plug-in's `synthesize_batch`; a bad request fails alone."""
        voices = self._voices()
        out: list[tuple[np.ndarray, int] | Exception] = []
        good: list[tuple[int, tuple[str, str, float]]] = []
        for text, voice, speed in requests:
            try:
                self._voice(text, voice, speed)
            except Exception as e:
                out.append(e)
                continue
            v = voice or self.spec.default_voice or (voices[0] if voices else "default")
            good.append((len(out), (text, v, float(speed))))
            out.append(RuntimeError("not synthesized"))
        if good:
            with torch.inference_mode():
                results = list(self.obj.synthesize_batch([r for _, r in good]))
            if len(results) != len(good):
                raise RuntimeError(f"synthesize_batch gave {len(results)} results for {len(good)} requests")
            for (i, _), (samples, sr) in zip(good, results, strict=True):
                out[i] = (as_samples(samples), int(sr))
        return out

    def _voices(self) -> list[str]:
        if self.spec.voices:
            return list(self.spec.voices)
        return [str(v) for v in getattr(self.obj, "voices", []) or []]

    def stats(self) -> Stats:
        vram = 0
        if self.cuda:
            self._measure_workspace()
            # What this process holds without NVML: the allocator's blocks plus the context (measured
            # when it was created), so a `cpu` model in keep-worker mode does not read ~0.
            vram = int(torch.cuda.memory_reserved(self.device)) + self.identity.context_bytes
        return Stats(
            device=str(self.device),
            vram_bytes=vram,
            host_bytes=self.host.numel(),
            device_bytes=self.weights_bytes,
            voices=self._voices(),
            sample_rate=int(getattr(self.obj, "sample_rate", 0) or 0),
            pinned_bytes=self.pinned.nbytes,
            pin_seconds=self.pinned.seconds,
            context_bytes=self.identity.context_bytes,
            workspace_bytes=self.workspace_bytes,
            gpu_pids=list(self.identity.pids),
        )

    def host_blobs(self) -> list[Blob]:
        """The host arena as one blob (its layout in `meta`), for the shared-memory block."""
        groups = [
            {
                "key": g.key,
                "offset": g.offset,
                "nbytes": g.host.numel(),
                "members": [m.to_json() for m in g.members],
            }
            for g in self.groups
        ]
        data = memoryview(self.host.numpy())  # type: ignore[arg-type]
        return [Blob("arena", {"groups": groups}, data)]

    def close(self) -> None:
        self.groups = []
        self.obj = None
        self.work = None
        self.pinned.release()  # before the arena (or the shared block under it) goes away
        self.host = torch.empty(0, dtype=torch.uint8)
        if self.cuda:
            with contextlib.suppress(Exception):
                self._free_cuda_cache()


def _stray_meta(obj: Any, limit: int = 100_000) -> str | None:
    """Where a skeleton holds a meta tensor that is no parameter or buffer of its modules, or None."""
    known = {id(f.tensor) for f in _collect(obj)}
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [(type(obj).__name__, obj)]
    while stack and len(seen) < limit:
        path, x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            if x.is_meta and id(x) not in known:
                return path
            continue
        items: Any
        if isinstance(x, dict):
            items = x.items()
        elif isinstance(x, list | tuple | set | frozenset):
            items = enumerate(x)
        elif hasattr(x, "__dict__") and not isinstance(x, type | types.ModuleType | types.FunctionType):
            items = vars(x).items()
        else:
            continue
        stack.extend((f"{path}.{k}", v) for k, v in items)
    return None


def _bytes_tensor(data: memoryview) -> torch.Tensor:
    if data.nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(data, dtype=torch.uint8)
