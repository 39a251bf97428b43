"""Admin verbs: wait for a model to be free, then map the asked verb onto what its state needs."""

from __future__ import annotations

import time

from tts_contract import State, Verb
from tts_runtime.engine.errors import BusyError, InvalidTransitionError
from tts_runtime.engine.slot import Slot
from tts_runtime.engine.verbs import VerbRunner


def run_admin(runner: VerbRunner, slot: Slot, verb: Verb, limit: float) -> None:
    """Forgiving where it is safe (docs/engine.md): load of a `cpu` model restores, offload of a model
    already off the GPU is a no-op; offload/release wait up to `limit` for leases, then `BusyError`."""
    name = slot.spec.name
    deadline = time.monotonic() + limit
    takes_gpu_away = verb in (Verb.OFFLOAD, Verb.RELEASE)
    with slot.cond:
        if takes_gpu_away:
            # Requests keep arriving under load: without this, leases could overlap for ever and the verb
            # would never see zero. New leases wait (at most `limit`) for the verb instead.
            slot.draining_for_admin += 1
        try:
            while slot.busy or (takes_gpu_away and slot.leases > 0):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BusyError(
                        f"model {name!r} still has {slot.leases} requests in flight after {limit:g}s; "
                        f"{verb.value} not done, try again",
                        retry_after=5.0,
                    )
                slot.cond.wait(left)
        finally:
            if takes_gpu_away:
                slot.draining_for_admin -= 1
                slot.cond.notify_all()
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
        elif verb == Verb.RELEASE and state == State.UNLOADED:
            run = None  # nothing to free: no transition, nothing counted
        if run is not None:
            runner.run(slot, run)
