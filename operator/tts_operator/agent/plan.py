"""Pure decisions of the agent: which models need the pod's policy, which must go for an offload request."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from tts_contract import ModelReport, OffloadRequestValue, Policy, Verb

Report = Mapping[str, Any]


def policy_body(desired: Policy) -> dict[str, Any]:
    """The `PUT /v1/models/{model}/policy` body: the whole policy, camelCase."""
    return desired.model_dump(by_alias=True)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def policy_differs(desired: Policy, current: Any) -> bool:
    """Whether a model's reported policy differs from the desired one in any field the annotation sets."""
    if not isinstance(current, Mapping):
        return True
    want = policy_body(desired)
    return any(key not in current or not _same(current[key], value) for key, value in want.items())


def models_needing_policy(desired: Policy, report: Report) -> list[str]:
    """Models of the runtime whose policy is not (or no longer, e.g. after a restart) the desired one."""
    return [
        str(model["name"])
        for model in report.get("models") or []
        if isinstance(model, Mapping) and "name" in model and policy_differs(desired, model.get("policy"))
    ]


def offload_targets(request: OffloadRequestValue, report: Report) -> list[str]:
    """Models to run the requested verb on: those idle and freeable for it (the contract's one rule)."""
    verb = Verb(request.verb)
    targets: list[str] = []
    for model in report.get("models") or []:
        try:
            line = ModelReport.model_validate(model)
        except ValidationError:
            continue  # a line this version cannot read is left alone
        if line.freeable(verb):
            targets.append(line.name)
    return targets
