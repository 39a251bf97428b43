"""On the real API server: every value the CRD accepts, the operator and the runtime accept, and vice versa.

For each field with a rule (pattern, bounds, enum, CEL), values on both sides of the rule go to the server
as a dry-run create and through the contract; the answers must be the same. A case where the server's
answer is the odd one out is a CRD that lets through a pod that crash-loops (or refuses what works); the
unit tests in test_contract.py cover the same rules without a server."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from support.cluster import Cluster
from tts_contract import GROUP, PLURAL, RESERVED_ENV, VERSION, Policy
from tts_operator.spec import InvalidSpecError, parse_spec
from tts_runtime.engine.models_file import ModelsFileError, parse_model_specs

M = {"name": "m"}
CASES: list[tuple[str, dict[str, Any]]] = [
    *(
        ("model.name", {"model": {"name": v}})
        for v in ["x-", "Hibari", "a.b_c-d", "-x", ".x", "a" * 63, "a" * 64, "bad name", "é", "hibari\n"]
    ),
    *(
        ("model.factory", {"model": {"name": "m", "backend": "plugin", "factory": v}})
        for v in [
            "a..b:c",
            "pkg.mod:Cls.create",
            "m:f",
            "m:",
            ":f",
            "m.f",
            "m:f.",
            "1m:f",
            "é:f",
            "m:f\n",
            "m :f",
        ]
    ),
    *(
        ("model.backend", {"model": {"name": "m", **v}})
        for v in [
            {"backend": "torch"},
            {"backend": "plugin"},
            {"backend": "hibari", "factory": "m:f"},
            {"backend": "torch", "factory": "m:f"},
            {"backend": "onnx", "factory": "m:f"},
            {},
        ]
    ),
    *(("model.variant", {"model": {"name": "m", "variant": v}}) for v in ["awq", "a" * 63, "a" * 64]),
    *(
        ("model.source", {"model": {"name": "m", "source": v}})
        for v in [
            {},
            {"uri": "hf://a/b"},
            {"uri": ""},
            {"pvc": {"claimName": "w"}},
            {"pvc": {"claimName": ""}},
            {"uri": "hf://a/b", "pvc": {"claimName": "w"}},
        ]
    ),
    *(
        ("residency", {"model": M, "residency": v})
        for v in [
            {"priority": 5000},
            {"priority": 1000},
            {"priority": -1000},
            {"priority": -1001},
            {"priority": 5.0},
            {"priority": 5.5},
            {"priority": "5"},
            {"pinned": "true"},
            {"offloadAfterUse": 1},
            {"idleOffloadSeconds": -1},
            {"idleOffloadSeconds": 0.5},
            {"idleOffloadSeconds": 0},
            {"idleOffloadSeconds": "10"},
            {"idleReleaseSeconds": None},
            {"colour": "red"},
            {"offloadAfterUse": False, "idleOffloadSeconds": 600, "idleReleaseSeconds": 60},
            {"offloadAfterUse": False, "idleOffloadSeconds": 600, "idleReleaseSeconds": 0},
            {"offloadAfterUse": False, "idleOffloadSeconds": 60, "idleReleaseSeconds": 60},
            {"offloadAfterUse": True, "idleOffloadSeconds": 600, "idleReleaseSeconds": 60},
            {"offloadAfterUse": False, "idleReleaseSeconds": 60},
        ]
    ),
    *(("replicas", {"model": M, "replicas": v}) for v in [0, 100, 101, -1]),
    *(("port", {"model": M, "port": v}) for v in [1, 65535, 0, 65536]),
    *(
        ("gpu", {"model": M, "gpu": v})
        for v in [{"count": 16}, {"count": 17}, {"memoryBudgetBytes": -1}, {"resourceName": ""}]
    ),
    *(
        ("env", {"model": M, "env": v})
        for v in [
            [{"name": "A", "value": "1"}],
            [{"name": ""}],
            *([{"name": name, "value": "1"}] for name in RESERVED_ENV),
        ]
    ),
    ("imagePullPolicy", {"model": M, "imagePullPolicy": "Sometimes"}),
    ("unknown field", {"model": M, "bogus": 1}),
]


@pytest.fixture(scope="module")
def objects(kube_cluster: Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(config.new_client_from_config(config_file=str(kube_cluster.kubeconfig)))


def server_accepts(api: client.CustomObjectsApi, namespace: str, spec: dict[str, Any]) -> tuple[bool, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TTSService", "metadata": {"name": "t"}, "spec": spec}
    try:
        created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, dry_run="All")
    except ApiException as err:
        # 422: refused by the schema; 400: a value pruning/decoding refuses (e.g. an unknown field, strictly).
        assert err.status in (400, 422), err.body
        return False, err.body
    return True, created


def contract_accepts(spec: dict[str, Any]) -> bool:
    try:
        parse_spec(spec, "t")
    except InvalidSpecError:
        return False
    return True


def runtime_accepts(spec: dict[str, Any]) -> bool:
    """What the runtime does with this spec: the models JSON the operator sends, plus the policy the agent
    applies (defaults filled in as the server does)."""
    model = {k: v for k, v in spec["model"].items() if k != "source"}
    try:
        parse_model_specs([{**model, "policy": spec.get("residency", {})}])
    except ModelsFileError:
        return False
    return True


def test_crd_operator_and_runtime_accept_the_same_values(
    objects: client.CustomObjectsApi, namespace: str
) -> None:
    """What the CRD accepts is judged as the operator and the runtime receive it: the object the server
    stores (it drops unknown fields and nulls, fills defaults, writes 5.0 as 5). What it refuses, the
    contract must refuse as written."""
    disagreements = []
    for field, spec in CASES:
        server, answer = server_accepts(objects, namespace, spec)
        seen = answer["spec"] if server else spec
        answers = {"crd": server, "operator": contract_accepts(seen)}
        if field.startswith(("model", "residency")) and "source" not in field:
            answers["runtime"] = runtime_accepts(seen)
        if len(set(answers.values())) > 1:
            why = f"stored {seen}" if server else answer
            disagreements.append(f"{field} {spec}: {answers} ({why})")
    assert not disagreements, "\n".join(disagreements)


def test_crd_defaults_are_the_contract_defaults(objects: client.CustomObjectsApi, namespace: str) -> None:
    ok, created = server_accepts(objects, namespace, {"model": M})
    assert ok, created
    spec = created["spec"]
    assert spec["residency"] == Policy.model_validate({}).to_json()
    parsed = parse_spec(spec, "t")
    model = spec["model"]
    assert (model["backend"], model["variant"]) == (parsed.model.backend, parsed.model.variant)
    assert (spec["replicas"], spec["port"]) == (parsed.replicas, parsed.port)
    assert (spec["gpu"]["count"], spec["gpu"]["resourceName"]) == (parsed.gpu.count, parsed.gpu.resource_name)
    sharing = spec["gpu"]["sharing"]
    assert (sharing["mode"], sharing["placement"]) == (parsed.gpu.sharing.mode, parsed.gpu.sharing.placement)
