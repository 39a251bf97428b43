"""Pure decisions of the agent: which models need the pod's policy, which must go for an offload request."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tts_operator.annotations import OffloadRequestValue, PolicyValue

Report = Mapping[str, Any]

# States an offload request can act on: a verb on a transient state would only be refused (409).
_OFFLOADABLE = frozenset({"gpu"})
_RELEASABLE = frozenset({"gpu", "cpu", "failed"})


def policy_body(desired: PolicyValue) -> dict[str, Any]:
    """The `PUT /v1/models/{model}/policy` body: the whole policy, camelCase."""
    return desired.model_dump(by_alias=True)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def policy_differs(desired: PolicyValue, current: Any) -> bool:
    """Whether a model's reported policy differs from the desired one in any field the annotation sets."""
    if not isinstance(current, Mapping):
        return True
    want = policy_body(desired)
    return any(key not in current or not _same(current[key], value) for key, value in want.items())


def models_needing_policy(desired: PolicyValue, report: Report) -> list[str]:
    """Models of the runtime whose policy is not (or no longer, e.g. after a restart) the desired one."""
    return [
        str(model["name"])
        for model in report.get("models") or []
        if isinstance(model, Mapping) and "name" in model and policy_differs(desired, model.get("policy"))
    ]


def offload_targets(request: OffloadRequestValue, report: Report) -> list[str]:
    """Models to run the requested verb on: holding what the verb frees, not leased, not pinned.

    A lease means a request is being served: taking its model away would fail it. A pinned model is
    exempt from automatic offloading, and a peer's request is automatic.
    """
    states = _OFFLOADABLE if request.verb == "offload" else _RELEASABLE
    targets: list[str] = []
    for model in report.get("models") or []:
        if not isinstance(model, Mapping) or "name" not in model:
            continue
        policy = model.get("policy")
        pinned = bool(policy.get("pinned")) if isinstance(policy, Mapping) else False
        if model.get("state") in states and not model.get("leases") and not pinned:
            targets.append(str(model["name"]))
    return targets
