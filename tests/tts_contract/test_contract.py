"""The contract's rules, once: each disagreement the runtime, the agent and the operator used to have."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from tts_contract import (
    ModelReport,
    ModelSpec,
    Policy,
    PolicyPatch,
    ServiceModel,
    State,
    Verb,
    annotations,
    idle_and_freeable,
)
from tts_operator.spec import InvalidSpecError, parse_spec


def runtime_accepts(model: dict[str, Any], policy: dict[str, Any] | None = None) -> bool:
    try:
        ModelSpec.model_validate({**model, **({"policy": policy} if policy is not None else {})})
    except ValidationError:
        return False
    return True


def operator_accepts(model: dict[str, Any], residency: dict[str, Any] | None = None) -> bool:
    try:
        parse_spec({"model": model, **({"residency": residency} if residency is not None else {})})
    except InvalidSpecError:
        return False
    return True


@pytest.mark.parametrize(
    ("factory", "ok"),
    [
        ("a..b:c", False),
        ("pkg.mod:Cls.create", True),
        ("my_tts.model:build", True),
        ("mod:", False),
        ("é:f", False),
        ("mod:f\n", False),
        ("1mod:f", False),
    ],
)
def test_factory_is_one_rule(factory: str, ok: bool) -> None:
    model = {"name": "m", "backend": "plugin", "factory": factory}
    assert runtime_accepts(model) is ok
    assert operator_accepts(model) is ok


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("x-", True),
        ("Hibari", True),
        ("step.base_2", True),
        ("-x", False),
        ("", False),
        ("a" * 63, True),
        ("a" * 64, False),
        ("hibari\n", False),
        ("bad name", False),
    ],
)
def test_model_names_are_one_rule(name: str, ok: bool) -> None:
    assert runtime_accepts({"name": name}) is ok
    assert operator_accepts({"name": name}) is ok


@pytest.mark.parametrize(
    ("model", "ok"),
    [
        (
            {"name": "t", "backend": "torch"},
            False,
        ),  # the runtime could not build it: every pod would crash-loop
        ({"name": "t", "backend": "plugin"}, False),
        ({"name": "t", "backend": "hibari", "factory": "m:f"}, False),
        ({"name": "t", "backend": "torch", "factory": "m:f"}, True),
    ],
)
def test_backend_and_factory(model: dict[str, Any], ok: bool) -> None:
    assert runtime_accepts(model) is ok
    assert operator_accepts(model) is ok


@pytest.mark.parametrize(
    ("policy", "ok"),
    [
        ({"priority": 5000}, False),
        ({"priority": 1000}, True),
        ({"priority": -1001}, False),
        ({"offloadAfterUse": False, "idleOffloadSeconds": 600, "idleReleaseSeconds": 60}, False),
        ({"offloadAfterUse": False, "idleOffloadSeconds": 600, "idleReleaseSeconds": 0}, True),
        ({"offloadAfterUse": True, "idleOffloadSeconds": 600, "idleReleaseSeconds": 60}, True),
        ({"idleOffloadSeconds": float("inf")}, False),
        ({"idleReleaseSeconds": float("nan")}, False),
        ({"idleOffloadSeconds": -1}, False),
        ({"pinned": "true"}, False),
        ({"priority": 5.0}, False),
        ({"idleOffloadSeconds": 5}, True),
        ({"idleOffloadSeconds": None}, False),
        ({"colour": 1}, False),
    ],
)
def test_policy_is_one_rule(policy: dict[str, Any], ok: bool) -> None:
    """spec.residency (operator), the policy annotation (agent) and a models file (runtime) agree."""
    assert runtime_accepts({"name": "m"}, policy) is ok
    assert operator_accepts({"name": "m"}, policy) is ok
    assert (annotations.parse(Policy, json.dumps(policy)) is not None) is ok


def test_priority_5000_never_reaches_a_pod_annotation() -> None:
    with pytest.raises(InvalidSpecError, match=r"spec\.residency\.priority"):
        parse_spec({"model": {"name": "m"}, "residency": {"priority": 5000}})


@pytest.mark.parametrize(
    "patch",
    [
        {"idleReleaseSeconds": None},
        {"idleOffloadSeconds": float("inf")},
        {"priority": 5000},
        {"pinned": 1},
        {"offloadAfterUse": None},
    ],
)
def test_a_patch_refuses_null_and_infinity(patch: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        PolicyPatch.model_validate(patch)


def test_a_patch_that_breaks_the_release_rule_is_refused_whole() -> None:
    current = Policy.model_validate({"offloadAfterUse": False, "idleOffloadSeconds": 60})
    with pytest.raises(ValidationError, match="idleReleaseSeconds must be 0"):
        current.merged(PolicyPatch.model_validate({"idleReleaseSeconds": 30}))
    fine = current.merged(PolicyPatch.model_validate({"idleReleaseSeconds": 0}))
    assert fine.idle_release_seconds == 0 and fine.idle_offload_seconds == 60


def test_a_service_model_always_gives_a_runtime_spec() -> None:
    model = ServiceModel.model_validate(
        {
            "name": "Mine",
            "backend": "plugin",
            "factory": "pkg.mod:Cls.create",
            "source": {"pvc": {"claimName": "w", "subPath": "v1"}},
        }
    )
    spec = model.model_spec("/models")
    assert (spec.name, spec.factory, spec.options["weights"]) == ("Mine", "pkg.mod:Cls.create", "/models/v1")


@pytest.mark.parametrize(
    ("state", "leases", "pinned", "verb", "freeable"),
    [
        (State.GPU, 0, False, Verb.OFFLOAD, True),
        (State.GPU, 1, False, Verb.OFFLOAD, False),  # serving a request
        (State.GPU, 0, True, Verb.OFFLOAD, False),
        (State.CPU, 0, False, Verb.OFFLOAD, False),  # nothing on the GPU to offload
        (State.CPU, 0, False, Verb.RELEASE, True),
        (State.FAILED, 0, False, Verb.RELEASE, True),
        (State.LOADING, 0, False, Verb.RELEASE, False),  # transient: a verb would be refused
        (State.UNLOADED, 0, False, Verb.RELEASE, False),
    ],
)
def test_idle_and_freeable(state: State, leases: int, pinned: bool, verb: Verb, freeable: bool) -> None:
    policy = Policy.model_validate({"pinned": pinned})
    assert idle_and_freeable(state, leases, policy, verb) is freeable
    line = ModelReport.model_validate({"name": "m", "state": state, "leases": leases, "policy": policy})
    assert line.freeable(verb) is freeable


def test_a_report_from_a_newer_version_still_parses() -> None:
    raw = json.dumps(
        {
            "models": [{"name": "m", "state": "gpu", "newField": 1}],
            "gpu": {"uuid": "G", "x": 2},
            "updated": "2026-01-01T00:00:00Z",
            "extra": True,
        }
    )
    value = annotations.parse(annotations.ResidencyValue, raw)
    assert value is not None and value.models[0].state == State.GPU and value.gpu is not None


def test_the_contract_imports_nothing_heavy() -> None:
    """The operator image has no numpy or torch: the contract must import without them."""
    code = (
        "import sys, tts_contract; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('numpy', 'torch', 'yaml', 'fastapi', 'kopf', 'kubernetes', 'tts_runtime', 'tts_operator')); "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_design_contract_lives_in_the_repository() -> None:
    """docs/DESIGN.md is the contract in words; nothing in the tree points at a copy outside it."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    design = (root / "docs" / "DESIGN.md").read_text()
    for field in ("offloadAfterUse", "idleOffloadSeconds", "idleReleaseSeconds", "pinned", "priority"):
        assert f"`{field}`" in design and field in Policy.model_validate({}).to_json()
    for state in State:
        assert f"`{state.value}`" in design
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True)
    outside = "shared" + "/DESIGN"  # spelled apart so this file does not find itself
    pointing = [
        name
        for name in tracked.stdout.split()
        if (root / name).is_file() and outside in (root / name).read_text(errors="ignore")
    ]
    assert not pointing, pointing


@pytest.mark.parametrize(
    ("argv", "blocked", "extra"),
    [
        (["-m", "tts_runtime", "serve"], "uvicorn", "runtime"),
        (["-c", "from tts_operator.cli import main; sys.exit(main(['run']))"], "kopf", "operator"),
        (
            [
                "-c",
                "from tts_operator.cli import main; "
                "sys.exit(main(['agent', '--pod', 'p', '--namespace', 'n']))",
            ],
            "httpx",
            "operator",
        ),
    ],
)
def test_a_command_without_its_extra_says_which_to_install(argv: list[str], blocked: str, extra: str) -> None:
    """`pip install .` alone: the commands exist and name the missing extra instead of a traceback."""
    block = f"import sys; sys.modules[{blocked!r}] = None; "
    if argv[0] == "-m":
        code = [
            "-c",
            block + f"import runpy; sys.argv = ['x', *{argv[2:]!r}]; "
            f"runpy.run_module({argv[1]!r}, run_name='__main__')",
        ]
    else:
        code = ["-c", block + argv[1]]
    done = subprocess.run([sys.executable, *code], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode != 0
    assert f"pip install 'residency[{extra}]'" in done.stderr and "Traceback" not in done.stderr, done.stderr
