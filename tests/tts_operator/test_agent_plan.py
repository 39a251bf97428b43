"""The agent's pure decisions: which models need the pod's policy, which models an offload request frees."""

from __future__ import annotations

from typing import Any

from tts_contract import OffloadRequestValue, Policy
from tts_operator.agent.plan import models_needing_policy, offload_targets, policy_body, policy_differs

DEFAULT = {
    "offloadAfterUse": True,
    "idleOffloadSeconds": 600.0,
    "idleReleaseSeconds": 3600.0,
    "pinned": False,
    "priority": 0,
}


def model(name: str, state: str = "cpu", leases: int = 0, **policy: Any) -> dict[str, Any]:
    return {"name": name, "state": state, "leases": leases, "policy": {**DEFAULT, **policy}}


def test_policy_body_is_the_whole_policy_in_camel_case() -> None:
    body = policy_body(Policy(offload_after_use=False, idle_offload_seconds=30))
    assert body == {**DEFAULT, "offloadAfterUse": False, "idleOffloadSeconds": 30}


def test_models_whose_policy_differs_need_it_and_int_vs_float_is_equal() -> None:
    desired = Policy.model_validate({"idleOffloadSeconds": 600, "priority": 5})
    report = {"models": [model("a", priority=5), model("b"), model("c", priority=5, pinned=True)]}
    assert models_needing_policy(desired, report) == ["b", "c"]
    assert not policy_differs(desired, {**DEFAULT, "priority": 5, "idleOffloadSeconds": 600})


def test_a_restarted_runtime_with_its_old_policy_needs_it_again() -> None:
    desired = Policy(offload_after_use=False)
    applied = {"models": [model("hibari", offloadAfterUse=False)]}
    restarted = {"models": [model("hibari")]}
    assert models_needing_policy(desired, applied) == []
    assert models_needing_policy(desired, restarted) == ["hibari"]


def test_missing_or_malformed_policy_in_the_report_counts_as_different() -> None:
    desired = Policy()
    report = {"models": [{"name": "x", "state": "cpu"}, {"name": "y", "policy": {"pinned": False}}, "junk"]}
    assert models_needing_policy(desired, report) == ["x", "y"]
    assert models_needing_policy(desired, {"models": []}) == []


def test_bool_is_not_confused_with_numbers() -> None:
    assert policy_differs(Policy(priority=1), {**DEFAULT, "priority": True})


def test_offload_request_picks_idle_unpinned_models_on_the_gpu() -> None:
    report = {
        "models": [
            model("idle-gpu", "gpu"),
            model("busy-gpu", "gpu", leases=1),
            model("pinned-gpu", "gpu", pinned=True),
            model("on-cpu", "cpu"),
            model("loading", "loading"),
            model("gone", "unloaded"),
        ]
    }
    assert offload_targets(OffloadRequestValue(id="1", verb="offload"), report) == ["idle-gpu"]


def test_release_request_also_frees_host_copies_and_failed_models() -> None:
    report = {
        "models": [
            model("g", "gpu"),
            model("c", "cpu"),
            model("f", "failed"),
            model("u", "unloaded"),
            model("busy", "cpu", leases=2),
            model("r", "restoring"),
        ]
    }
    assert offload_targets(OffloadRequestValue(id="1", verb="release"), report) == ["g", "c", "f"]
