"""The chart renders valid Kubernetes objects for its defaults and for each non-default configuration."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
from chartlib import KUBE_VERSIONS, NAMESPACE, by_kind, objects, one, render

# Each set switches on a part of the chart that the defaults leave off or shape differently.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaces-restricted": {"operator": {"watchNamespaces": ["tts-a", "tts-b"]}},
    "servicemonitor": {
        "serviceMonitor": {
            "enabled": True,
            "namespace": "monitoring",
            "labels": {"release": "kps"},
            "namespaces": ["tts-a"],
        },
    },
    "networkpolicy": {
        "networkPolicy": {
            "enabled": True,
            "allowedFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}
            ],
        },
        "serviceMonitor": {"enabled": True},
    },
    "networkpolicy-restricted-closed": {
        "operator": {"watchNamespaces": ["tts-a"]},
        "networkPolicy": {"enabled": True, "allowSameNamespace": False},
    },
    "no-crds-no-sa": {"crds": {"install": False}, "serviceAccount": {"create": False, "name": "existing-sa"}},
    "custom-images-resources": {
        "operator": {
            "image": {"repository": "registry.example/op", "tag": "dev-1", "pullPolicy": "Always"},
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
            "extraArgs": ["--verbose"],
            "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
            "podAnnotations": {"example.com/team": "speech"},
        },
        "runtime": {"image": {"repository": "registry.example/rt", "digest": "sha256:" + "a" * 64}},
        "imagePullSecrets": ["regcred"],
        "fullnameOverride": "tts",
    },
}

# kubernetes-validate ships no schema for the Prometheus Operator's CRD; this checks the fields we set,
# with the names and shapes of monitoring.coreos.com/v1 ServiceMonitor.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "minProperties": 1,
                    "maxProperties": 1,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                        },
                    },
                },
            },
        },
    },
}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest, chart: helm.Chart) -> tuple[str, list[dict[str, Any]]]:
    return request.param, objects(render(chart, VALUE_SETS[request.param]))


def _container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_every_object_passes_kubernetes_validate_strict(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = rendered
    assert objs
    for obj in objs:
        if obj["kind"] == "ServiceMonitor":
            jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(
                    f"{obj['kind']}/{obj['metadata']['name']} invalid for {version}: {err.message} "
                    f"at {'.'.join(map(str, err.absolute_path))}"
                )


def test_names_are_unique_per_kind_and_namespace(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = rendered
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), keys


def test_operator_pod_is_locked_down(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objs = rendered
    deployment = one(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = _container(objs)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    resources = _container(objs)["resources"]
    assert resources["requests"] and resources["limits"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # The operator must never look like an inference pod to the ServiceMonitor or the NetworkPolicy.
    assert deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"] != "tts-operator"


def test_operator_command_env_and_liveness(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objs = rendered
    values = VALUE_SETS[name]
    container = _container(objs)
    args = container["args"]
    assert container["command"] == ["tts-operator"]
    assert args[:2] == ["run", "--standalone"]
    watched = values.get("operator", {}).get("watchNamespaces", [])
    if watched:
        assert "--all-namespaces" not in args
        assert [args[i + 1] for i, a in enumerate(args) if a == "--namespace"] == watched
    else:
        assert "--all-namespaces" in args and "--namespace" not in args
    assert args[args.index("--liveness") + 1] == "http://0.0.0.0:8080/healthz"
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[probe["port"]] == 8080
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["RESIDENCY_AGENT_IMAGE"]["value"] == container["image"]
    if name == "custom-images-resources":
        assert container["image"] == "registry.example/op:dev-1"
        assert env["RESIDENCY_RUNTIME_IMAGE"]["value"] == "registry.example/rt@sha256:" + "a" * 64
        assert "HTTPS_PROXY" in env and args[-1] == "--verbose"
        assert container["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
        pod = one(objs, "Deployment")["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert one(objs, "Deployment")["metadata"]["name"] == "tts-operator"
    else:
        assert container["image"] == "ghcr.io/residency-dev/residency-operator:0.1.0"
        assert env["RESIDENCY_RUNTIME_IMAGE"]["value"] == "ghcr.io/residency-dev/residency-runtime:0.1.0"


def test_rbac_follows_watched_namespaces(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objs = rendered
    watched = VALUE_SETS[name].get("operator", {}).get("watchNamespaces", [])
    sa_name = one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    roles = by_kind(objs, "Role")
    if watched:
        # Nothing cluster-wide: Kopf runs without scanning namespaces or CRDs (tts_operator/cli.py).
        assert by_kind(objs, "ClusterRole") == [] and by_kind(objs, "ClusterRoleBinding") == []
        assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(watched)
        namespaced_rules = roles[0]["rules"]
        bindings = by_kind(objs, "RoleBinding")
        assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(watched)
    else:
        assert roles == []
        namespaced_rules = one(objs, "ClusterRole")["rules"]
        cluster_resources = {r for rule in namespaced_rules for r in rule["resources"]}
        assert "customresourcedefinitions" in cluster_resources and "namespaces" not in cluster_resources
        bindings = by_kind(objs, "ClusterRoleBinding")
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE}]
    granted = {
        (g, r, v)
        for rule in namespaced_rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    # The agent's Role (pods get/list/watch/patch) can only be created by someone who holds it.
    for verb in ("get", "list", "watch", "patch"):
        assert ("", "pods", verb) in granted
    assert ("tts.residency.dev", "ttsservices/status", "patch") in granted
    for resource in ("deployments", "services", "serviceaccounts", "roles", "rolebindings"):
        assert any(r == resource and v == "create" for _, r, v in granted), resource
    assert not any(g == "kopf.dev" for g, _, _ in granted), "standalone operator needs no peering rules"
    assert not any(v in {"*", "escalate", "bind", "impersonate", "update"} for _, _, v in granted)
    # The one delete: DRA claim templates are immutable, replaced by delete + create.
    assert {r for _, r, v in granted if v == "delete"} == {"resourceclaimtemplates"}
    assert {v for _, r, v in granted if r == "ttsservices/status"} == {"patch"}
    assert not any(r in {"*", "secrets"} for _, r, _ in granted)


def test_optional_parts_follow_their_switches(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, objs = rendered
    values = VALUE_SETS[name]
    crds = by_kind(objs, "CustomResourceDefinition")
    assert len(crds) == int(values.get("crds", {}).get("install", True))
    sas = by_kind(objs, "ServiceAccount")
    if values.get("serviceAccount", {}).get("create", True):
        prefix = "tts" if name == "custom-images-resources" else "residency"
        assert [s["metadata"]["name"] for s in sas] == [f"{prefix}-operator"]
    else:
        assert sas == []
        assert one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "existing-sa"
    monitors = by_kind(objs, "ServiceMonitor")
    assert len(monitors) == int(values.get("serviceMonitor", {}).get("enabled", False))
    policies = by_kind(objs, "NetworkPolicy")
    assert bool(policies) == values.get("networkPolicy", {}).get("enabled", False)


def test_servicemonitor_scrapes_operator_created_services(chart: helm.Chart) -> None:
    objs = objects(render(chart, VALUE_SETS["servicemonitor"]))
    monitor = one(objs, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "tts-operator",
        "app.kubernetes.io/name": "residency",
    }
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["tts-a"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    default_ns = one(objects(render(chart, {"serviceMonitor": {"enabled": True}})), "ServiceMonitor")
    assert default_ns["metadata"]["namespace"] == NAMESPACE
    assert default_ns["spec"]["namespaceSelector"] == {"any": True}


def test_networkpolicy_limits_port_8000_to_listed_peers(chart: helm.Chart) -> None:
    objs = objects(render(chart, VALUE_SETS["networkpolicy"]))
    runtime = [p for p in by_kind(objs, "NetworkPolicy") if p["metadata"]["name"].endswith("-runtime")]
    (policy,) = runtime
    assert policy["metadata"]["namespace"] == NAMESPACE
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "tts-operator",
        "app.kubernetes.io/name": "residency",
    }
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert rule["from"] == [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]
    operator = next(p for p in by_kind(objs, "NetworkPolicy") if p["metadata"]["name"].endswith("-operator"))
    assert operator["spec"]["ingress"] == [{"ports": [{"port": "health", "protocol": "TCP"}]}]
    assert operator["spec"]["podSelector"]["matchLabels"].items() <= (
        one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )


def test_networkpolicy_with_no_peers_closes_the_port(chart: helm.Chart) -> None:
    objs = objects(render(chart, VALUE_SETS["networkpolicy-restricted-closed"]))
    runtime = [p for p in by_kind(objs, "NetworkPolicy") if p["metadata"]["name"].endswith("-runtime")]
    # One per watched namespace: a NetworkPolicy only selects pods of its own namespace.
    assert [p["metadata"]["namespace"] for p in runtime] == ["tts-a"]
    assert runtime[0]["spec"]["ingress"] == []


def test_notes_tell_how_to_start(chart: helm.Chart) -> None:
    notes = next(text for path, text in render(chart).items() if path.endswith("NOTES.txt"))
    assert "kubectl get tts" in notes
    assert "kind: TTSService" in notes
    assert "residency-operator" in notes
    restricted = next(
        text
        for path, text in render(chart, VALUE_SETS["networkpolicy"]).items()
        if path.endswith("NOTES.txt")
    )
    assert "cannot filter by path" in restricted
