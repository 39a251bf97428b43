"""The chart lints clean, matches the project version, and its values schema rejects bad values by name."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import helm_python as helm
import pytest
import yaml
from chartlib import CHART_DIR, KUBE_VERSIONS, REPO, render

# (values, text the error must contain: the key's path, so the user knows what to fix)
BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"operator": {"watchNamespace": ["tts"]}}, "watchNamespace"),  # typo'd key
    ({"servicemonitor": {"enabled": True}}, "servicemonitor"),  # wrong case at the top level
    ({"networkPolicy": {"enabeld": True}}, "enabeld"),
    ({"serviceMonitor": {"enabled": "yes"}}, "/serviceMonitor/enabled"),  # wrong type
    ({"operator": {"watchNamespaces": "tts"}}, "/operator/watchNamespaces"),  # a string, not a list
    ({"operator": {"image": {"tag": 1.2}}}, "/operator/image/tag"),
    ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "/operator/image/pullPolicy"),
    ({"operator": {"healthPort": 80}}, "/operator/healthPort"),  # privileged port, the pod is non-root
    ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "/operator/watchNamespaces/0"),
    ({"runtime": {"image": {"digest": "latest"}}}, "/runtime/image/digest"),
    ({"serviceMonitor": {"interval": "30 seconds"}}, "/serviceMonitor/interval"),
    ({"crds": {"install": "false"}}, "/crds/install"),
    ({"networkPolicy": {"allowedFrom": [{"namespace": "gateway"}]}}, "/networkPolicy/allowedFrom/0"),
]


@pytest.mark.parametrize(("values", "named"), BAD_VALUES, ids=[n for _, n in BAD_VALUES])
def test_bad_values_are_rejected_naming_the_key(
    chart: helm.Chart, values: dict[str, Any], named: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        chart.validate_schema(values)
    assert named in str(err.value)
    # An install renders with the same check: nothing half-configured reaches the cluster.
    with pytest.raises(helm.HelmValuesError, match=named.rsplit("/", 1)[-1]):
        render(chart, values)


def test_every_default_value_is_described_by_the_schema(chart: helm.Chart) -> None:
    schema = chart.schema
    assert schema is not None

    def walk(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
        assert node.get("additionalProperties") is False, f"{path or '/'} accepts unknown keys"
        for key, value in values.items():
            assert key in node["properties"], f"{path}/{key} is not in values.schema.json"
            child = node["properties"][key]
            # Free-form Kubernetes objects (resources, affinity…) are validated by the API server.
            if isinstance(value, dict) and child.get("properties"):
                walk(value, child, f"{path}/{key}")

    walk(chart.values, schema, "")
    chart.validate_schema(chart.values)


def test_lint_is_clean_for_each_supported_kubernetes() -> None:
    for kube_version in (f"v{v}" for v in KUBE_VERSIONS):
        for values in ({}, {"serviceMonitor": {"enabled": True}, "networkPolicy": {"enabled": True}}):
            report = helm.lint(CHART_DIR, values, strict=True, kube_version=kube_version)
            problems = [m for m in report["messages"] if m["severity"] >= 2]
            assert report["errors"] == [] and problems == [], problems


def test_lint_reports_bad_values() -> None:
    report = helm.lint(CHART_DIR, {"operator": {"replicas": 2}}, strict=True)
    assert any("replicas" in m["error"] for m in report["messages"] if m["severity"] >= 2)


def test_chart_version_matches_the_project() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert meta["version"] == project["version"]
    assert meta["appVersion"] == project["version"]
    # The tests validate against the oldest Kubernetes the chart admits.
    assert meta["kubeVersion"] == f">={KUBE_VERSIONS[0]}-0"


def test_install_docs_list_every_value(chart: helm.Chart) -> None:
    schema = chart.schema
    assert schema is not None

    def leaves(node: dict[str, Any], prefix: str) -> set[str]:
        keys: set[str] = set()
        for key, child in node["properties"].items():
            dotted = f"{prefix}{key}"
            # Objects with their own keys are documented key by key; free-form ones as a whole.
            if child.get("properties") and key not in {"livenessProbe", "resources"}:
                keys |= leaves(child, dotted + ".")
            else:
                keys.add(dotted)
        return keys

    documented = set(
        re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", (REPO / "docs" / "install.md").read_text(), re.M)
    )
    assert leaves(schema, "") - {"global"} == documented
