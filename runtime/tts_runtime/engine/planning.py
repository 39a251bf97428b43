"""Pure decisions: the idle plan, eviction victims and load-retry backoff (no locks, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from tts_contract import Policy, State, Verb, idle_and_freeable


@dataclass(frozen=True)
class SlotView:
    """What the planners need to know about one model at one instant."""

    name: str
    state: State
    leases: int
    idle_seconds: float  # since the last lease ended or the last verb finished
    policy: Policy
    used_since_restore: bool = False  # a request ran since the last load/restore
    last_used: float = 0.0  # monotonic; least recently used goes first
    gpu_bytes: int = 0


@dataclass(frozen=True)
class Action:
    name: str
    verb: Verb


def plan_idle(views: list[SlotView]) -> tuple[list[Action], float | None]:
    """Actions due now, and seconds until the next one may be due (None: nothing scheduled)."""
    actions: list[Action] = []
    next_due: float | None = None

    def due_in(seconds: float) -> None:
        nonlocal next_due
        if seconds > 0 and (next_due is None or seconds < next_due):
            next_due = seconds

    for v in views:
        release_after = v.policy.idle_release_seconds
        if release_after > 0 and idle_and_freeable(v.state, v.leases, v.policy, Verb.RELEASE):
            if v.idle_seconds >= release_after:
                actions.append(Action(v.name, Verb.RELEASE))
                continue
            due_in(release_after - v.idle_seconds)
        if not idle_and_freeable(v.state, v.leases, v.policy, Verb.OFFLOAD):
            continue
        # offloadAfterUse needs a use: a model an admin loaded to pre-warm stays until idleOffloadSeconds.
        after_use = v.policy.offload_after_use and v.used_since_restore
        if after_use or v.idle_seconds >= v.policy.idle_offload_seconds:
            actions.append(Action(v.name, Verb.OFFLOAD))
        else:
            due_in(v.policy.idle_offload_seconds - v.idle_seconds)
    return actions, next_due


def choose_victims(candidates: list[SlotView], needed_bytes: int) -> list[SlotView]:
    """Idle, unpinned GPU-resident models to offload to free `needed_bytes`: lowest priority, then
    least recently used, first. Returns [] when even all of them would not be enough (don't churn)."""
    eligible = [
        c
        for c in candidates
        if c.gpu_bytes > 0 and idle_and_freeable(c.state, c.leases, c.policy, Verb.OFFLOAD)
    ]
    eligible.sort(key=lambda c: (c.policy.priority, c.last_used))
    chosen: list[SlotView] = []
    freed = 0
    for c in eligible:
        if freed >= needed_bytes:
            break
        chosen.append(c)
        freed += c.gpu_bytes
    return chosen if freed >= needed_bytes else []


def retry_backoff(failures: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Seconds a failed model waits before a request may retry its load: 0 after the first failure
    (a transient error retries at once), then base, 2*base, ... up to cap.

    Not tenacity: nothing here retries a call (the next request after `retry_at` does), so there is no
    retry loop for it to drive; a deterministic line the state machine and its tests read is all it takes."""
    if failures <= 1:
        return 0.0
    return float(min(cap, base * 2 ** (failures - 2)))
