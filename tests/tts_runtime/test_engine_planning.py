"""The pure planners: idle plan, eviction victims, retry backoff."""

from __future__ import annotations

from tts_contract import Policy, State, Verb
from tts_runtime.engine.planning import SlotView, choose_victims, plan_idle, retry_backoff


def view(name: str = "m", state: State = State.GPU, idle: float = 0.0, **kw: object) -> SlotView:
    policy = kw.pop("policy", Policy.model_validate({}))
    return SlotView(
        name=name, state=state, leases=int(kw.pop("leases", 0)), idle_seconds=idle, policy=policy, **kw
    )  # type: ignore[arg-type]


def P(**kw: object) -> Policy:
    return Policy.model_validate(kw)


def test_offload_after_use_only_after_a_use() -> None:
    actions, _ = plan_idle([view(used_since_restore=True)])
    assert [(a.name, a.verb) for a in actions] == [("m", Verb.OFFLOAD)]
    # Pre-warmed by an admin load and never used: waits for idleOffloadSeconds instead.
    actions, due = plan_idle([view(used_since_restore=False, idle=10)])
    assert actions == [] and due == 590


def test_idle_offload_and_release_timers() -> None:
    pol = P(offloadAfterUse=False, idleOffloadSeconds=60, idleReleaseSeconds=300)
    assert plan_idle([view(idle=59, policy=pol, used_since_restore=True)]) == ([], 1)
    assert plan_idle([view(idle=60, policy=pol)])[0][0].verb == Verb.OFFLOAD
    assert plan_idle([view(state=State.CPU, idle=299, policy=pol)]) == ([], 1)
    assert plan_idle([view(state=State.CPU, idle=300, policy=pol)])[0][0].verb == Verb.RELEASE
    # Release wins over offload when both are due (straight from gpu to unloaded).
    assert plan_idle([view(idle=400, policy=pol)])[0][0].verb == Verb.RELEASE


def test_zero_release_means_never_and_pinned_and_leased_are_left_alone() -> None:
    never = P(offloadAfterUse=False, idleOffloadSeconds=60, idleReleaseSeconds=0)
    assert plan_idle([view(state=State.CPU, idle=1e9, policy=never)]) == ([], None)
    pinned = P(pinned=True, idleReleaseSeconds=1)
    assert plan_idle([view(idle=1e9, policy=pinned, used_since_restore=True)]) == ([], None)
    assert plan_idle([view(idle=1e9, leases=1, used_since_restore=True)]) == ([], None)
    assert plan_idle([view(state=State.UNLOADED, idle=1e9)]) == ([], None)


def test_choose_victims_lowest_priority_then_least_recently_used() -> None:
    a = view("a", policy=P(priority=5), last_used=1.0, gpu_bytes=100)
    b = view("b", policy=P(priority=0), last_used=9.0, gpu_bytes=100)
    c = view("c", policy=P(priority=0), last_used=2.0, gpu_bytes=100)
    pinned = view("p", policy=P(pinned=True, priority=-9), gpu_bytes=1000)
    leased = view("l", leases=1, policy=P(priority=-9), gpu_bytes=1000)
    assert [v.name for v in choose_victims([a, b, c, pinned, leased], 150)] == ["c", "b"]
    assert [v.name for v in choose_victims([a, b, c], 300)] == ["c", "b", "a"]
    # Not enough even with all of them: offload nothing rather than churn for a refusal.
    assert choose_victims([a, b, c, pinned, leased], 301) == []


def test_backoff_grows_and_is_capped() -> None:
    assert [retry_backoff(n, base=1.0, cap=8.0) for n in range(1, 7)] == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0]
