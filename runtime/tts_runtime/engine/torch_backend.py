"""Torch backend: a host copy kept for the model's life, a working copy on the device that offload drops.

Inference never changes weights, so offload copies nothing back: it points every parameter and buffer at
its host tensor and frees the device storage. Restore allocates device tensors and copies host→device
(non-blocking from pinned memory, then one synchronize). Which modules move (the plug-in rule):
the object itself if it is an `nn.Module`; else the modules its `residency_modules()` returns; else
every `nn.Module` attribute of the object. Optional hooks `residency_offload()` and
`residency_restore(device)` let a plug-in move anything else it owns.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tts_runtime.engine.backends import (
    Blob,
    GpuOutOfMemory,
    Stats,
    as_samples,
    check_request,
    resolve_factory,
)
from tts_runtime.engine.spec import ModelSpec


@dataclass
class _Group:
    """One tensor, wherever it is referenced (tied weights are one group)."""

    key: str
    is_param: bool
    host: torch.Tensor
    places: list[tuple[nn.Module, str]] = field(default_factory=list)
    param: nn.Parameter | None = None

    def point_at(self, t: torch.Tensor) -> None:
        if self.param is not None:
            self.param.data = t
        else:
            for owner, leaf in self.places:
                owner._buffers[leaf] = t


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


class TorchBackend:
    def __init__(self, spec: ModelSpec, device: str) -> None:
        self.spec = spec
        self.device = _resolve_device(device)
        self.obj: Any = None
        self.groups: list[_Group] = []
        self.on_device = False

    # -- building ---------------------------------------------------------------------------------
    def _build(self, meta: bool = False) -> Any:
        assert self.spec.factory
        factory = resolve_factory(self.spec.factory)
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
        if not callable(getattr(obj, "synthesize", None)):
            raise TypeError(
                f"factory {self.spec.factory!r} returned {type(obj).__name__}, which has no "
                "synthesize(text, voice, speed) -> (samples, sample_rate)"
            )
        return obj

    def _collect(self, obj: Any) -> list[tuple[str, bool, torch.Tensor, list[tuple[nn.Module, str]]]]:
        """(key, is_param, tensor, places) for every distinct parameter and buffer."""
        found: dict[int, tuple[str, bool, torch.Tensor, list[tuple[nn.Module, str]]]] = {}
        for i, mod in enumerate(modules_of(obj)):
            for kind, items in (
                ("p", mod.named_parameters(remove_duplicate=False)),
                ("b", mod.named_buffers(remove_duplicate=False)),
            ):
                for name, t in items:
                    if t is None:
                        continue
                    prefix, _, leaf = name.rpartition(".")
                    owner = mod.get_submodule(prefix) if prefix else mod
                    entry = found.setdefault(id(t), (f"{i}.{kind}.{name}", kind == "p", t, []))
                    entry[3].append((owner, leaf))
        return list(found.values())

    def _pin(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return t.pin_memory()
        return t

    def load(self) -> None:
        self.obj = self._build()
        self.groups = []
        for key, is_param, t, places in self._collect(self.obj):
            host = self._pin(t.detach().to("cpu"))
            g = _Group(key, is_param, host, places, t if is_param and isinstance(t, nn.Parameter) else None)
            g.point_at(host)
            self.groups.append(g)
        self.restore()

    def adopt_host(self, blobs: list[Blob]) -> None:
        """Rebuild around a host copy in shared memory; ends in `cpu` (the caller restores)."""
        by_key = {b.key: b for b in blobs}
        self.obj = self._build(meta=True)
        self.groups = []
        for key, is_param, t, places in self._collect(self.obj):
            blob = by_key.get(key)
            if blob is None:
                raise RuntimeError(
                    f"shared host copy has no tensor {key!r}; the factory built a different model"
                )
            host = _tensor_from_blob(blob)
            if host.shape != t.shape:
                raise RuntimeError(
                    f"shared host copy of {key!r} has shape {tuple(host.shape)}, model wants {tuple(t.shape)}"
                )
            g = _Group(key, is_param, host, places)
            if is_param:
                # A meta parameter cannot take CPU data in place: one new Parameter for all its places.
                g.param = nn.Parameter(host, requires_grad=False)
                for owner, leaf in places:
                    owner._parameters[leaf] = g.param
            else:
                g.point_at(host)
            self.groups.append(g)
        self.on_device = False

    # -- memory verbs -----------------------------------------------------------------------------
    def offload(self) -> None:
        for g in self.groups:
            g.point_at(g.host)
        hook = getattr(self.obj, "residency_offload", None)
        if callable(hook):
            hook()
        self.on_device = False
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # give the freed blocks back to the driver, not just to torch's cache

    def restore(self) -> None:
        dev = self.device
        try:
            for g in self.groups:
                if dev.type == "cpu":
                    work = g.host.clone()  # a CPU "device" still gets its own working copy
                else:
                    work = torch.empty_like(g.host, device=dev)
                    work.copy_(g.host, non_blocking=True)
                g.point_at(work)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            hook = getattr(self.obj, "residency_restore", None)
            if callable(hook):
                hook(str(dev))
        except torch.cuda.OutOfMemoryError as e:
            self.offload()
            raise GpuOutOfMemory(f"CUDA out of memory while moving {self.spec.name} to {dev}: {e}") from None
        self.on_device = True

    def synthesize(self, text: str, voice: str | None, speed: float) -> tuple[np.ndarray, int]:
        voices = self._voices()
        check_request(text, voice, speed, voices)
        voice = voice or self.spec.default_voice or (voices[0] if voices else "default")
        with torch.inference_mode():
            samples, sr = self.obj.synthesize(text, voice, float(speed))
        return as_samples(samples), int(sr)

    def _voices(self) -> list[str]:
        if self.spec.voices:
            return list(self.spec.voices)
        return [str(v) for v in getattr(self.obj, "voices", []) or []]

    def stats(self) -> Stats:
        vram = 0
        if self.device.type == "cuda":
            vram = int(torch.cuda.memory_reserved(self.device))
        return Stats(
            device=str(self.device),
            vram_bytes=vram,
            host_bytes=sum(g.host.numel() * g.host.element_size() for g in self.groups),
            voices=self._voices(),
            sample_rate=int(getattr(self.obj, "sample_rate", 0) or 0),
        )

    def host_blobs(self) -> list[Blob]:
        blobs = []
        for g in self.groups:
            flat = g.host.contiguous().reshape(-1).view(torch.uint8)
            meta = {"dtype": str(g.host.dtype).removeprefix("torch."), "shape": list(g.host.shape)}
            blobs.append(Blob(g.key, meta, memoryview(flat.numpy())))  # type: ignore[arg-type]
        return blobs

    def close(self) -> None:
        self.groups = []
        self.obj = None
        if self.device.type == "cuda":
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()


def _tensor_from_blob(blob: Blob) -> torch.Tensor:
    dtype = getattr(torch, blob.meta["dtype"])
    shape = tuple(blob.meta["shape"])
    if blob.data.nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    raw = torch.frombuffer(blob.data, dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)
