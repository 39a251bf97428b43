"""The residency engine: owns every model of a runtime process, its leases, policy and idle monitor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import numpy as np
from pydantic import ValidationError

from tts_contract import (
    ModelReport,
    ModelSpec,
    Policy,
    PolicyPatch,
    ResidencyReport,
    State,
    Verb,
    worker_group_problem,
)
from tts_runtime.engine.admin_verbs import run_admin
from tts_runtime.engine.backends import Chunks
from tts_runtime.engine.budget import GpuBudget
from tts_runtime.engine.clock import Clock, SystemClock
from tts_runtime.engine.errors import (
    BusyError,
    InvalidRequestError,
    ModelLoadError,
    ResidencyError,
    UnknownModelError,
    WorkerCrashedError,
)
from tts_runtime.engine.executor import ExecutionTimeout, Executor
from tts_runtime.engine.gpu import GpuProbe, NoGpu, NvmlProbe
from tts_runtime.engine.lease import Lease, Transition
from tts_runtime.engine.lifecycle import sweep_stale_blocks
from tts_runtime.engine.planning import plan_idle
from tts_runtime.engine.reporting import gpu_pids, model_report, process_pids
from tts_runtime.engine.shared_worker import SharedWorker
from tts_runtime.engine.slot import Slot
from tts_runtime.engine.suspending import Checkpointer, suspend_helper
from tts_runtime.engine.verbs import VerbRunner

log = logging.getLogger(__name__)

OPENAI_ALIASES = frozenset({"tts-1", "tts-1-hd", "gpt-4o-mini-tts"})
MONITOR_MAX_SLEEP = 5.0


def _policy_problem(err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'policy'}: {str(e['msg']).removeprefix('Value error, ')}"
        for e in err.errors()
    )


class Engine:
    """See docs/engine.md. Cheap to build: no weights, no worker, no CUDA until a model is used."""

    def __init__(
        self,
        specs: list[ModelSpec],
        device: str = "auto",
        clock: Clock | None = None,
        gpu: GpuProbe | None = None,
        *,
        admin_timeout: float = 30.0,
        gpu_wait_seconds: float = 3.0,
        retry_backoff_seconds: float = 1.0,
        checkpoint: Checkpointer | None = None,
        gpu_memory_budget_bytes: int | None = None,
    ) -> None:
        if not specs:
            raise ValueError("the engine needs at least one ModelSpec")
        names = [s.name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {dupes}")
        problem = worker_group_problem(specs)
        if problem is not None:
            raise ValueError(problem)
        self.clock: Clock = clock or SystemClock()
        self.gpu: GpuProbe = gpu if gpu is not None else (NoGpu() if device == "cpu" else NvmlProbe())
        self.device = self._resolve_device(device)
        self.admin_timeout = admin_timeout
        self.gpu_wait_seconds = gpu_wait_seconds
        self.retry_backoff_seconds = retry_backoff_seconds
        self._slots: dict[str, Slot] = {}
        # `suspend` only where a probe at start proves the driver can (a persistent helper drives it).
        self._checkpoint, no_suspend = suspend_helper(specs, self.device.startswith("cuda"), checkpoint)
        for s in specs:
            dev = self.device if s.device in (None, "auto") else self._resolve_device(s.device)
            # auto = keep-worker until bench on a GPU says otherwise (docs/engine.md: restore latency).
            mode = "keep-worker" if s.cpu_mode == "auto" else s.cpu_mode
            if mode == "suspend" and (self._checkpoint is None or s.execution != "worker"):
                why = no_suspend or "it executes inline"
                log.warning("model %s: cpuMode suspend is off here (%s); keep-worker instead", s.name, why)
                mode = "keep-worker"
            self._slots[s.name] = Slot(
                spec=s, device=dev, cpu_mode=mode, policy=s.policy, voices=_voices_of(s)
            )
        self._subs: list[Callable[[Transition], None]] = []
        self._subs_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._closing = False
        # gpu_memory_budget_bytes: the pod's share of a shared GPU (what the operator scheduled it with).
        budget = GpuBudget(self._slots, self.gpu, self.clock, gpu_wait_seconds, gpu_memory_budget_bytes)
        self._verbs = VerbRunner(
            budget, self.clock, self._emit, retry_backoff_seconds, self._checkpoint, self._worker_groups()
        )
        if any(s.execution == "worker" for s in specs):
            sweep_stale_blocks()

    def _worker_groups(self) -> dict[str, SharedWorker]:
        """One shared process per `workerGroup` (its models all name one device: checked above)."""
        members: dict[str, list[Slot]] = {}
        for slot in self._slots.values():
            if slot.spec.worker_group is not None:
                members.setdefault(slot.spec.worker_group, []).append(slot)
        return {
            group: SharedWorker(group, [s.spec for s in slots], slots[0].device)
            for group, slots in members.items()
        }

    def _resolve_device(self, device: str) -> str:
        if device == "auto":
            return "cuda:0" if self.gpu.available() else "cpu"
        return "cuda:0" if device == "cuda" else device

    # -- lookup -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._slots)

    def spec(self, name: str) -> ModelSpec:
        return self._slot(name).spec

    def voices(self, name: str) -> list[str]:
        """The model's voices: what its backend reported once loaded, else what is known before a load."""
        slot = self._slot(name)
        with slot.cond:
            return list((slot.stats.voices if slot.stats else None) or slot.voices)

    def _slot(self, name: str) -> Slot:
        try:
            return self._slots[name]
        except KeyError:
            raise UnknownModelError(
                f"unknown model {name!r}; this runtime serves: {', '.join(self._slots)}"
            ) from None

    def resolve(self, model: str) -> str:
        """A request's model -> the served name: exact, "name:variant", or an OpenAI alias."""
        if model in self._slots:
            return model
        if model in OPENAI_ALIASES or not model:
            return next(iter(self._slots))
        base, _, variant = model.partition(":")
        for s in self._slots.values():
            if variant and (
                (s.spec.name == base and s.spec.variant == variant) or s.spec.name == f"{base}-{variant}"
            ):
                return s.spec.name
        raise UnknownModelError(f"unknown model {model!r}; this runtime serves: {', '.join(self._slots)}")

    # -- events -----------------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[Transition], None]) -> Callable[[], None]:
        with self._subs_lock:
            self._subs.append(callback)

        def unsubscribe() -> None:
            with self._subs_lock, contextlib.suppress(ValueError):
                self._subs.remove(callback)

        return unsubscribe

    def _emit(self, t: Transition) -> None:
        # Every verb end moves an idle timer: the monitor re-plans now, not at its next scheduled pass.
        self._wake.set()
        with self._subs_lock:
            subs = list(self._subs)
        for cb in subs:
            try:
                cb(t)
            except Exception:
                log.exception("transition subscriber failed")

    # -- leases -----------------------------------------------------------------------------------
    def acquire(self, model: str) -> Lease:
        """Take a lease, loading or restoring the model first if needed. Prefer `lease()`/`alease()`."""
        slot = self._slot(model)
        with slot.cond:
            while True:
                if self._closing:
                    raise BusyError("the runtime is shutting down; retry on another replica", retry_after=5.0)
                if slot.busy or slot.draining_for_admin:
                    slot.cond.wait()
                    continue
                if slot.state == State.GPU:
                    slot.leases += 1
                    return Lease(self, slot)
                if slot.state == State.CPU:
                    self._run_verb(slot, Verb.RESTORE)
                    continue
                if slot.state == State.FAILED:
                    wait = slot.retry_at - self.clock.monotonic()
                    if wait > 0:
                        raise ModelLoadError(
                            f"model {model!r} failed to load ({slot.error}); next retry in {wait:.1f}s",
                            retry_after=wait,
                        )
                self._run_verb(slot, Verb.LOAD)

    @contextlib.contextmanager
    def lease(self, model: str) -> Iterator[Lease]:
        held = self.acquire(model)
        try:
            yield held
        finally:
            held.close()

    @contextlib.asynccontextmanager
    async def alease(self, model: str) -> AsyncIterator[Lease]:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, self.acquire, model)
        try:
            held = await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The load goes on in its thread; whatever lease it yields must not be leaked.
            fut.add_done_callback(
                lambda f: f.result().close() if not f.cancelled() and not f.exception() else None
            )
            raise
        try:
            yield held
        finally:
            held.close()

    def _end_lease(self, slot: Slot) -> None:
        with slot.cond:
            slot.leases -= 1
            now = self.clock.monotonic()
            slot.last_active = slot.last_used = now
            slot.last_used_wall = self.clock.now()
            slot.used_since_restore = True
            if slot.leases == 0:
                slot.cond.notify_all()
                if slot.policy.offload_after_use and not slot.policy.pinned:
                    self._wake.set()

    def _synthesize(
        self, slot: Slot, text: str, voice: str | None, speed: float, cancel: threading.Event | None
    ) -> tuple[np.ndarray, int]:
        ex = slot.executor
        if ex is None:
            raise WorkerCrashedError(f"model {slot.spec.name!r} lost its worker; retry the request")
        with self._synthesis_errors(slot, ex):
            return ex.synthesize(text, voice, speed, slot.spec.request_timeout_seconds, cancel)

    def _synthesize_stream(
        self, slot: Slot, text: str, voice: str | None, speed: float, cancel: threading.Event | None
    ) -> Chunks:
        """`_synthesize` in chunks, with the same errors; `cancel` or closing it stops the model's work."""
        ex = slot.executor
        if ex is None:
            raise WorkerCrashedError(f"model {slot.spec.name!r} lost its worker; retry the request")
        chunks = ex.synthesize_stream(text, voice, speed, slot.spec.request_timeout_seconds, cancel)
        try:
            with self._synthesis_errors(slot, ex):
                yield from chunks
        finally:
            chunks.close()

    @contextlib.contextmanager
    def _synthesis_errors(self, slot: Slot, ex: Executor) -> Iterator[None]:
        """A request's failures as clients see them: a crashed or timed-out worker is ended and reported."""
        try:
            yield
        except ResidencyError as e:
            if isinstance(e, WorkerCrashedError):
                self._verbs.on_crash(slot, ex, str(e))
            raise
        except ExecutionTimeout as e:
            self._verbs.on_crash(slot, ex, str(e))
            raise WorkerCrashedError(str(e)) from None
        except Exception as e:
            raise ResidencyError(f"model {slot.spec.name!r} failed to synthesize: {e}") from e

    def _run_verb(self, slot: Slot, verb: Verb) -> None:
        """Run one verb on a slot whose `cond` the caller holds (see `VerbRunner.run`)."""
        self._verbs.run(slot, verb)

    # -- admin verbs ------------------------------------------------------------------------------
    def load(self, name: str, timeout: float | None = None) -> ModelReport:
        return self._admin(name, Verb.LOAD, timeout)

    def offload(self, name: str, timeout: float | None = None) -> ModelReport:
        return self._admin(name, Verb.OFFLOAD, timeout)

    def restore(self, name: str, timeout: float | None = None) -> ModelReport:
        return self._admin(name, Verb.RESTORE, timeout)

    def release(self, name: str, timeout: float | None = None) -> ModelReport:
        return self._admin(name, Verb.RELEASE, timeout)

    def _admin(self, name: str, verb: Verb, timeout: float | None) -> ModelReport:
        slot = self._slot(name)
        run_admin(self._verbs, slot, verb, self.admin_timeout if timeout is None else timeout)
        return self.model_report(name)

    # -- policy and the idle monitor --------------------------------------------------------------
    def set_policy(self, name: str, patch: PolicyPatch) -> Policy:
        return self.set_policies([name], patch)[name]

    def set_policies(self, names: list[str], patch: PolicyPatch) -> dict[str, Policy]:
        """Apply `patch` to every named model, or to none: each merged policy is validated whole first
        (InvalidRequestError saying which rule), so a stored policy is always one the monitor can plan."""
        slots = [self._slot(name) for name in names]
        merged: dict[str, Policy] = {}
        for slot in slots:
            with slot.cond:
                try:
                    merged[slot.spec.name] = slot.policy.merged(patch)
                except ValidationError as err:
                    raise InvalidRequestError(f"model {slot.spec.name!r}: {_policy_problem(err)}") from None
        for slot in slots:
            with slot.cond:
                slot.policy = merged[slot.spec.name]
        self._wake.set()
        return merged

    def tick(self) -> float | None:
        """One pass of the idle monitor: apply every action due now; returns seconds to the next one."""
        now = self.clock.monotonic()
        views = []
        for slot in self._slots.values():
            with slot.cond:
                views.append(slot.view(now))
        actions, next_due = plan_idle(views)
        for a in actions:
            self._verbs.auto(self._slots[a.name], a.verb)
        return next_due

    def start(self) -> None:
        """Start the one idle-monitor thread (idempotent)."""
        if self._monitor is not None:
            return
        self._stop.clear()
        self._monitor = threading.Thread(target=self._monitor_loop, name="residency-monitor", daemon=True)
        self._monitor.start()
        self.prespawn()

    def prespawn(self) -> None:
        """Start each worker model's process ahead of its first load (idempotent; `start()` does it too):
        first requests find their worker started. It touches no GPU (imports, host-only work; on a CPU
        device the whole load and a warm-up). The CLI calls it before importing the web server, so the
        two start-ups overlap. `shutdown()` ends what no load used."""
        for slot in self._slots.values():
            with slot.cond:
                if slot.state == State.UNLOADED and not slot.busy and not self._closing:
                    self._verbs.prespawn(slot)

    def _monitor_loop(self) -> None:
        while not self._stop.is_set():
            try:
                next_due = self.tick()
            except Exception:
                log.exception("idle monitor pass failed")
                next_due = None
            self._wake.wait(min(next_due or MONITOR_MAX_SLEEP, MONITOR_MAX_SLEEP))
            self._wake.clear()

    def cannot_serve(self) -> dict[str, str]:
        """Models that cannot make progress now (a stopped or dead worker), with why: for readiness."""
        out: dict[str, str] = {}
        for name, slot in self._slots.items():
            ex = slot.executor
            why = ex.cannot_serve() if ex is not None else None
            if why is not None:
                out[name] = f"model {name!r} cannot serve: {why}"
        return out

    # -- reports ----------------------------------------------------------------------------------
    def model_report(self, name: str) -> ModelReport:
        return model_report(self._slot(name), self.clock.monotonic(), self.gpu)

    def report(self) -> ResidencyReport:
        models = [self.model_report(n) for n in self._slots]
        return ResidencyReport(models=models, gpu=self.gpu.report(gpu_pids(self._slots.values())))

    def pids(self) -> list[int]:
        """This process and its workers (what NVML per-process accounting sums)."""
        return process_pids(self._slots.values())

    # -- shutdown ---------------------------------------------------------------------------------
    def shutdown(self, drain_timeout: float = 30.0) -> None:
        """Refuse new leases, wait up to `drain_timeout` for open leases and running verbs, then end every
        worker: loading, serving or idle. Returns within the drain plus the time to kill and reap."""
        self._closing = True
        self._stop.set()
        self._wake.set()
        self._verbs.close_prespawned()
        deadline = time.monotonic() + max(0.0, drain_timeout)
        for slot in self._slots.values():
            with slot.cond:
                while (slot.busy or slot.leases > 0) and deadline - time.monotonic() > 0:
                    slot.cond.wait(deadline - time.monotonic())
        for slot in self._slots.values():
            with slot.cond:
                if not (slot.busy or slot.leases > 0):
                    continue
                log.warning(
                    "shutdown: %s is still %s with %d requests after the drain; ending its worker",
                    slot.spec.name,
                    slot.state.value,
                    slot.leases,
                )
                victims = [ex for ex in (slot.pending, slot.executor) if ex is not None]
            for ex in victims:
                ex.kill()  # the load or request in flight fails now and its verb ends
        for slot in self._slots.values():
            with slot.cond:
                # A killed worker ends its verb within a poll; an inline load cannot be killed: abandon it.
                ends = time.monotonic() + 10.0
                while slot.busy and ends - time.monotonic() > 0:
                    slot.cond.wait(ends - time.monotonic())
                if slot.busy:
                    log.warning("shutdown: %s is still %s; abandoning it", slot.spec.name, slot.state.value)
                    continue
                self._run_verb(slot, Verb.RELEASE)
        if self._monitor is not None:
            self._monitor.join(timeout=10.0)
            self._monitor = None
        if self._checkpoint is not None:
            self._checkpoint.close()

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _voices_of(spec: ModelSpec) -> list[str]:
    if spec.voices:
        return list(spec.voices)
    if spec.backend == "hibari":
        try:
            from tts_runtime.engine.hibari_backend import available_voices

            return available_voices()
        except Exception:
            return []
    return []
