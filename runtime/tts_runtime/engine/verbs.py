"""The verb runner: moves one model between states, emits its `Transition`, and rolls back failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tts_contract import VERB_PATH, State, Verb
from tts_runtime.engine.backends import GpuOutOfMemory
from tts_runtime.engine.budget import GpuBudget
from tts_runtime.engine.clock import Clock
from tts_runtime.engine.errors import (
    InsufficientGpuMemoryError,
    ModelLoadError,
    ResidencyError,
    WorkerCrashedError,
)
from tts_runtime.engine.executor import ExecutionTimeout, Executor, InlineExecutor
from tts_runtime.engine.lease import Transition
from tts_runtime.engine.planning import plan_idle, retry_backoff
from tts_runtime.engine.shared_worker import SharedExecutor, SharedWorker
from tts_runtime.engine.slot import Slot
from tts_runtime.engine.suspending import Checkpointer, SuspendingExecutor
from tts_runtime.engine.worker import WorkerExecutor

log = logging.getLogger(__name__)


class VerbRunner:
    """Runs verbs on slots; `emit` gets every transition, failed ones included."""

    def __init__(
        self,
        budget: GpuBudget,
        clock: Clock,
        emit: Callable[[Transition], None],
        retry_backoff_seconds: float,
        checkpoint: Checkpointer | None = None,
        groups: dict[str, SharedWorker] | None = None,
    ) -> None:
        self.budget = budget
        self.clock = clock
        self.emit = emit
        self.retry_backoff_seconds = retry_backoff_seconds
        self.checkpoint = checkpoint  # the engine's CUDA checkpoint helper (cpuMode suspend), if probed
        self._prespawned: dict[str, WorkerExecutor] = {}  # model -> executor with a warm process, unused
        self.groups = groups or {}  # workerGroup -> the process its models share

    def prespawn(self, slot: Slot) -> None:
        """Start a model's worker ahead of its first load where that costs no GPU memory (the process
        imports and prepares, touching no device); `standbyWorker: false` opts out."""
        spec = slot.spec
        if spec.execution != "worker" or not spec.standby_worker or spec.name in self._prespawned:
            return
        if slot.cpu_mode == "suspend":
            return  # its worker is a SuspendingExecutor's, built at load
        if spec.worker_group is not None:
            self.groups[spec.worker_group].prespawn()
            return
        ex = WorkerExecutor(slot.spec, slot.device, slot.cpu_mode)
        ex.prespawn()
        self._prespawned[slot.spec.name] = ex

    def close_prespawned(self) -> None:
        """End the warm processes no load has used (shutdown)."""
        while self._prespawned:
            _, ex = self._prespawned.popitem()
            ex.close()
        for group in self.groups.values():
            group.close_idle()

    def run(self, slot: Slot, verb: Verb) -> None:
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
            self.emit(Transition(slot.spec.name, verb, src, dest, seconds, exc is None, error))
        finally:
            slot.cond.acquire()
        if exc is not None:
            raise exc

    def auto(self, slot: Slot, verb: Verb, *, evicting: bool = False) -> bool:
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
                self.run(slot, verb)
                if verb == Verb.OFFLOAD and slot.policy.pinned and slot.state == State.CPU:
                    # Pinned while the offload ran: the pin wins, the model goes back on the GPU.
                    self.run(slot, Verb.RESTORE)
            except ResidencyError as e:
                log.warning("automatic %s of %s failed: %s", verb.value, slot.spec.name, e)
                return False
            return True

    def evict(self, slot: Slot) -> bool:
        """Offload an idle peer to make GPU room (the budget's victims)."""
        return self.auto(slot, Verb.OFFLOAD, evicting=True)

    def on_crash(self, slot: Slot, ex: Executor, error: str) -> None:
        """The worker died under a request: unload (consistently) so the next request loads again."""
        with slot.cond:
            if slot.executor is not ex or slot.busy:
                return  # already handled, or a verb runs and handles the failure itself
            src = slot.state
            slot.executor, slot.stats, slot.state, slot.error = None, None, State.UNLOADED, error
            slot.cond.notify_all()
        ex.close()
        self.emit(Transition(slot.spec.name, Verb.RELEASE, src, State.UNLOADED, 0.0, False, error))

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
                self.budget.remember(slot, slot.stats)
                return State.CPU, None, None
            except Exception as e:
                self._drop(slot)
                msg = f"offload of {name!r} failed, model unloaded: {e}"
                slot.error = msg
                return State.UNLOADED, msg, ResidencyError(msg)
        needed = self.budget.needed(slot, verb)
        try:
            self.budget.ensure(slot, needed, self.evict)
        except InsufficientGpuMemoryError as e:
            return src, str(e), e
        if verb == Verb.LOAD:
            ex = self._new_executor(slot)
            slot.pending = ex
            try:
                slot.stats = ex.load(slot.spec.load_timeout_seconds)
            except GpuOutOfMemory as e:
                ex.close()
                return src, str(e), self.budget.refuse(slot, needed, str(e))
            except Exception as e:
                ex.close()
                return self._failed_load(slot, e)
            finally:
                slot.pending = None
            slot.executor, slot.error, slot.failures = ex, None, 0
            slot.known_bytes = slot.stats.device_bytes or slot.stats.host_bytes
            self.budget.remember(slot, slot.stats)
            return State.GPU, None, None
        ex = slot.executor  # RESTORE
        assert ex is not None
        try:
            slot.stats = ex.restore(slot.spec.load_timeout_seconds)
            self.budget.remember(slot, slot.stats)
            slot.error = None
            return State.GPU, None, None
        except GpuOutOfMemory as e:
            return State.CPU, str(e), self.budget.refuse(slot, needed, str(e))
        except Exception as e:
            msg = f"restore of {name!r} failed: {error_text(e)}"
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
        msg = f"loading model {slot.spec.name!r} failed: {error_text(e)}"
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
        ex: WorkerExecutor
        if slot.spec.worker_group is not None:
            ex = SharedExecutor(slot.spec, slot.device, self.groups[slot.spec.worker_group])
        elif slot.cpu_mode == "suspend" and self.checkpoint is not None:
            ex = SuspendingExecutor(slot.spec, slot.device, self.checkpoint)
        else:
            warm = self._prespawned.pop(slot.spec.name, None)
            ex = warm if warm is not None else WorkerExecutor(slot.spec, slot.device, slot.cpu_mode)
        # A worker that dies while idle is noticed now, not by the next request (which would fail).
        ex.on_death = lambda message: self.on_crash(slot, ex, message)
        return ex


def error_text(e: BaseException) -> str:
    s = str(e).strip()
    return s if s else type(e).__name__
