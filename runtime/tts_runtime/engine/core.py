"""The residency engine: owns every model of a runtime process and decides where its weights live."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import numpy as np

from tts_runtime.engine.backends import GpuOutOfMemory, Stats
from tts_runtime.engine.clock import Clock, SystemClock
from tts_runtime.engine.executor import ExecutionTimeout, Executor, InlineExecutor
from tts_runtime.engine.gpu import GpuProbe, NoGpu, NvmlProbe
from tts_runtime.engine.lease import Lease, Transition
from tts_runtime.engine.planning import choose_victims, plan_idle, retry_backoff
from tts_runtime.engine.slot import Slot
from tts_runtime.engine.spec import ModelSpec
from tts_runtime.engine.worker import WorkerExecutor
from tts_runtime.residency import (
    VERB_PATH,
    BusyError,
    InsufficientGpuMemoryError,
    InvalidTransitionError,
    ModelLoadError,
    ModelReport,
    Policy,
    PolicyPatch,
    ResidencyError,
    ResidencyReport,
    State,
    UnknownModelError,
    Verb,
    WorkerCrashedError,
)

log = logging.getLogger(__name__)

OPENAI_ALIASES = frozenset({"tts-1", "tts-1-hd", "gpt-4o-mini-tts"})
DEMAND_TTL = 60.0  # seconds a refused GPU demand stays in the report for the operator to see
MONITOR_MAX_SLEEP = 5.0


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
    ) -> None:
        if not specs:
            raise ValueError("the engine needs at least one ModelSpec")
        names = [s.name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {dupes}")
        self.clock: Clock = clock or SystemClock()
        self.gpu: GpuProbe = gpu if gpu is not None else (NoGpu() if device == "cpu" else NvmlProbe())
        self.device = self._resolve_device(device)
        self.admin_timeout = admin_timeout
        self.gpu_wait_seconds = gpu_wait_seconds
        self.retry_backoff_seconds = retry_backoff_seconds
        self._slots: dict[str, Slot] = {}
        for s in specs:
            dev = self.device if s.device in (None, "auto") else self._resolve_device(s.device)
            # auto = keep-worker until bench on a GPU says otherwise (docs/engine.md: restore latency).
            mode = "keep-worker" if s.cpu_mode == "auto" else s.cpu_mode
            self._slots[s.name] = Slot(
                spec=s, device=dev, cpu_mode=mode, policy=s.policy, voices=_voices_of(s)
            )
        self._subs: list[Callable[[Transition], None]] = []
        self._subs_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._closing = False

    def _resolve_device(self, device: str) -> str:
        if device == "auto":
            return "cuda:0" if self.gpu.available() else "cpu"
        return "cuda:0" if device == "cuda" else device

    # -- lookup -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._slots)

    def spec(self, name: str) -> ModelSpec:
        return self._slot(name).spec

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
                if slot.busy:
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

    def _synthesize(self, slot: Slot, text: str, voice: str | None, speed: float) -> tuple[np.ndarray, int]:
        ex = slot.executor
        if ex is None:
            raise WorkerCrashedError(f"model {slot.spec.name!r} lost its worker; retry the request")
        try:
            return ex.synthesize(text, voice, speed, slot.spec.request_timeout_seconds)
        except ResidencyError as e:
            if isinstance(e, WorkerCrashedError):
                self._on_crash(slot, ex, str(e))
            raise
        except ExecutionTimeout as e:
            self._on_crash(slot, ex, str(e))
            raise WorkerCrashedError(str(e)) from None
        except Exception as e:
            raise ResidencyError(f"model {slot.spec.name!r} failed to synthesize: {e}") from e

    def _on_crash(self, slot: Slot, ex: Executor, error: str) -> None:
        """The worker died under a request: unload (consistently) so the next request loads again."""
        with slot.cond:
            if slot.executor is not ex:
                return
            src = slot.state
            slot.executor, slot.stats, slot.state, slot.error = None, None, State.UNLOADED, error
            slot.cond.notify_all()
        ex.close()
        self._emit(Transition(slot.spec.name, Verb.RELEASE, src, State.UNLOADED, 0.0, False, error))

    # -- verbs ------------------------------------------------------------------------------------
    def _run_verb(self, slot: Slot, verb: Verb) -> None:
        """Run one verb on a slot whose `cond` the caller holds (released while the work runs)."""
        src = slot.state
        transient = VERB_PATH[verb][0] if verb != Verb.RELEASE else src
        slot.state, slot.busy = transient, True
        t0 = time.perf_counter()
        slot.cond.release()
        try:
            dest, error, exc = self._do(slot, verb, src)
        finally:
            slot.cond.acquire()
        seconds = time.perf_counter() - t0
        slot.state, slot.busy = dest, False
        slot.transitions[verb.value] = seconds
        slot.last_active = self.clock.monotonic()
        if verb in (Verb.LOAD, Verb.RESTORE) and dest == State.GPU:
            slot.used_since_restore = False
        slot.cond.notify_all()
        slot.cond.release()
        try:
            self._emit(Transition(slot.spec.name, verb, src, dest, seconds, exc is None, error))
        finally:
            slot.cond.acquire()
        if exc is not None:
            raise exc

    def _do(self, slot: Slot, verb: Verb, src: State) -> tuple[State, str | None, ResidencyError | None]:
        """The work of a verb, without the slot lock: (new state, error text, exception to raise)."""
        name = slot.spec.name
        if verb == Verb.RELEASE:
            ex, slot.executor = slot.executor, None
            if ex is not None:
                ex.close()
            slot.stats, slot.error, slot.failures = None, None, 0
            return State.UNLOADED, None, None
        if verb == Verb.OFFLOAD:
            ex = slot.executor
            assert ex is not None
            try:
                slot.stats = ex.offload()
                return State.CPU, None, None
            except Exception as e:
                self._drop(slot)
                msg = f"offload of {name!r} failed, model unloaded: {e}"
                slot.error = msg
                return State.UNLOADED, msg, ResidencyError(msg)
        needed = slot.known_bytes or slot.spec.estimated_bytes or 0
        try:
            self._ensure_gpu_budget(slot, needed)
        except InsufficientGpuMemoryError as e:
            return src, str(e), e
        if verb == Verb.LOAD:
            ex = self._new_executor(slot)
            try:
                slot.stats = ex.load(slot.spec.load_timeout_seconds)
            except GpuOutOfMemory as e:
                ex.close()
                return src, str(e), self._refuse(slot, needed, str(e))
            except Exception as e:
                ex.close()
                return self._failed_load(slot, e)
            slot.executor, slot.error, slot.failures = ex, None, 0
            slot.known_bytes = slot.stats.host_bytes
            return State.GPU, None, None
        ex = slot.executor  # RESTORE
        assert ex is not None
        try:
            slot.stats = ex.restore(slot.spec.load_timeout_seconds)
            slot.error = None
            return State.GPU, None, None
        except GpuOutOfMemory as e:
            return State.CPU, str(e), self._refuse(slot, needed, str(e))
        except Exception as e:
            msg = f"restore of {name!r} failed: {_text(e)}"
            slot.error = msg
            if ex.host_intact():
                return State.CPU, msg, ModelLoadError(msg)
            self._drop(slot)
            slot.error = msg
            err = e if isinstance(e, WorkerCrashedError) else ModelLoadError(msg)
            return State.UNLOADED, msg, err

    def _failed_load(self, slot: Slot, e: Exception) -> tuple[State, str, ResidencyError]:
        slot.failures += 1
        backoff = retry_backoff(slot.failures, self.retry_backoff_seconds)
        slot.retry_at = self.clock.monotonic() + backoff
        msg = f"loading model {slot.spec.name!r} failed: {_text(e)}"
        if isinstance(e, ExecutionTimeout):
            msg += " (raise loadTimeoutSeconds in the model spec if it is just slow)"
        slot.error, slot.stats = msg, None
        return State.FAILED, msg, ModelLoadError(msg, retry_after=max(backoff, 0.1))

    def _drop(self, slot: Slot) -> None:
        ex, slot.executor, slot.stats = slot.executor, None, None
        if ex is not None:
            ex.close()

    def _new_executor(self, slot: Slot) -> Executor:
        if slot.spec.execution == "inline":
            return InlineExecutor(slot.spec, slot.device)
        return WorkerExecutor(slot.spec, slot.device, slot.cpu_mode)

    # -- GPU budget -------------------------------------------------------------------------------
    def _ensure_gpu_budget(self, slot: Slot, needed: int) -> None:
        """Make room for `needed` bytes (offloading idle peers of this process) or refuse."""
        if needed <= 0 or not slot.device.startswith("cuda"):
            return
        free = self.gpu.free_bytes()
        if free is None or free >= needed:
            self._clear_demand(slot)
            return
        now = self.clock.monotonic()
        others = [s for s in self._slots.values() if s is not slot]
        views = []
        for s in others:
            with s.cond:
                views.append(s.view(now))
        for v in choose_victims(views, needed - free):
            self._auto_verb(self._slots[v.name], Verb.OFFLOAD, evicting=True)
        free = self.gpu.free_bytes() or 0
        deadline = self.clock.monotonic() + self.gpu_wait_seconds
        if free < needed and self.gpu_wait_seconds > 0:
            # Say what we wait for, so the operator can ask an idle peer pod to offload meanwhile.
            self._set_demand(slot, needed)
            while free < needed and self.clock.monotonic() < deadline:
                self.clock.sleep(0.25)
                free = self.gpu.free_bytes() or 0
        if free < needed:
            raise self._refuse(slot, needed, f"{free} bytes free", free)
        self._clear_demand(slot)

    def _refuse(
        self, slot: Slot, needed: int, why: str, free: int | None = None
    ) -> InsufficientGpuMemoryError:
        self._set_demand(slot, needed)
        return InsufficientGpuMemoryError(
            f"not enough GPU memory for model {slot.spec.name!r}: needs {needed} bytes, {why} after "
            "offloading "
            "this runtime's idle models; retry later",
            needed_bytes=needed,
            free_bytes=free if free is not None else (self.gpu.free_bytes() or 0),
            retry_after=5.0,
        )

    def _set_demand(self, slot: Slot, needed: int) -> None:
        with slot.cond:
            slot.demand_bytes = needed
            slot.demand_until = self.clock.monotonic() + DEMAND_TTL

    def _clear_demand(self, slot: Slot) -> None:
        with slot.cond:
            slot.demand_bytes = 0

    def _auto_verb(self, slot: Slot, verb: Verb, *, evicting: bool = False) -> bool:
        """A verb the engine decided on: only on an idle, unpinned, unleased model; never waits."""
        with slot.cond:
            if slot.busy or slot.leases > 0 or slot.policy.pinned:
                return False
            if not evicting:
                actions, _ = plan_idle([slot.view(self.clock.monotonic())])
                if not any(a.verb == verb for a in actions):
                    return False  # the policy changed or a request came since the plan
            elif slot.state != State.GPU:
                return False
            try:
                self._run_verb(slot, verb)
            except ResidencyError as e:
                log.warning("automatic %s of %s failed: %s", verb.value, slot.spec.name, e)
                return False
            return True

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
        limit = self.admin_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with slot.cond:
            while slot.busy or (verb in (Verb.OFFLOAD, Verb.RELEASE) and slot.leases > 0):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BusyError(
                        f"model {name!r} still has {slot.leases} requests in flight after {limit:g}s; "
                        f"{verb.value} not done, try again",
                        retry_after=5.0,
                    )
                slot.cond.wait(left)
            state = slot.state
            run: Verb | None = verb
            if verb == Verb.LOAD:
                run = None if state == State.GPU else (Verb.RESTORE if state == State.CPU else Verb.LOAD)
            elif verb == Verb.OFFLOAD:
                run = Verb.OFFLOAD if state == State.GPU else None  # already off the GPU
            elif verb == Verb.RESTORE:
                if state in (State.UNLOADED, State.FAILED):
                    raise InvalidTransitionError(f"model {name!r} is {state.value}; use load, not restore")
                run = Verb.RESTORE if state == State.CPU else None
            if run is not None:
                self._run_verb(slot, run)
        return self.model_report(name)

    # -- policy and the idle monitor --------------------------------------------------------------
    def set_policy(self, name: str, patch: PolicyPatch) -> Policy:
        slot = self._slot(name)
        with slot.cond:
            slot.policy = slot.policy.merged(patch)
            policy = slot.policy
        self._wake.set()
        return policy

    def tick(self) -> float | None:
        """One pass of the idle monitor: apply every action due now; returns seconds to the next one."""
        now = self.clock.monotonic()
        views = []
        for slot in self._slots.values():
            with slot.cond:
                views.append(slot.view(now))
        actions, next_due = plan_idle(views)
        for a in actions:
            self._auto_verb(self._slots[a.name], a.verb)
        return next_due

    def start(self) -> None:
        """Start the one idle-monitor thread (idempotent)."""
        if self._monitor is not None:
            return
        self._stop.clear()
        self._monitor = threading.Thread(target=self._monitor_loop, name="residency-monitor", daemon=True)
        self._monitor.start()

    def _monitor_loop(self) -> None:
        while not self._stop.is_set():
            try:
                next_due = self.tick()
            except Exception:
                log.exception("idle monitor pass failed")
                next_due = None
            self._wake.wait(min(next_due or MONITOR_MAX_SLEEP, MONITOR_MAX_SLEEP))
            self._wake.clear()

    # -- reports ----------------------------------------------------------------------------------
    def model_report(self, name: str) -> ModelReport:
        slot = self._slot(name)
        now = self.clock.monotonic()
        with slot.cond:
            stats = slot.stats or Stats(device=slot.device)
            pids = slot.executor.pids() if slot.executor is not None else []
            idle = None
            if slot.leases:
                idle = 0.0
            elif slot.last_active is not None:
                idle = max(0.0, now - slot.last_active)
            report = ModelReport(
                name=slot.spec.name,
                variant=slot.spec.variant,
                state=slot.state,
                device=stats.device,
                vramBytes=stats.vram_bytes,
                hostBytes=stats.host_bytes,
                lastUsed=slot.last_used_wall,
                idleSeconds=idle,
                leases=slot.leases,
                error=slot.error,
                policy=slot.policy,
                gpuDemandBytes=slot.demand_bytes if slot.demand_until > now else 0,
                voices=stats.voices or slot.voices,
                transitions=dict(slot.transitions),
            )
        if pids:
            measured = self.gpu.process_bytes(pids)
            # NVML sees the CUDA context too; in a container without the host PID namespace it
            # matches no pid (0), and the worker's own torch count is the better number.
            if measured is not None and not isinstance(self.gpu, NoGpu):
                report.vram_bytes = max(measured, report.vram_bytes)
        return report

    def report(self) -> ResidencyReport:
        models = [self.model_report(n) for n in self._slots]
        return ResidencyReport(models=models, gpu=self.gpu.report(self.pids()))

    def pids(self) -> list[int]:
        """This process and its workers (what NVML per-process accounting sums)."""
        out = [os.getpid()]
        for slot in self._slots.values():
            ex = slot.executor
            if ex is not None:
                out.extend(ex.pids())
        return out

    # -- shutdown ---------------------------------------------------------------------------------
    def shutdown(self, drain_timeout: float = 30.0) -> None:
        """Refuse new leases, wait up to `drain_timeout` for open ones, release everything, end workers."""
        self._closing = True
        self._stop.set()
        self._wake.set()
        if self._monitor is not None:
            self._monitor.join(timeout=10.0)
            self._monitor = None
        deadline = time.monotonic() + drain_timeout
        for slot in self._slots.values():
            with slot.cond:
                while slot.busy or slot.leases > 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        log.warning(
                            "shutdown: %s still has %d leases; releasing anyway", slot.spec.name, slot.leases
                        )
                        break
                    slot.cond.wait(left)
                if slot.busy:
                    continue  # a verb still runs; its executor is closed below when it ends
                self._run_verb(slot, Verb.RELEASE)

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _text(e: BaseException) -> str:
    s = str(e).strip()
    return s if s else type(e).__name__


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
