"""The CRD: names, printer columns; every bound of its schema refused by the real API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from support.cluster import Cluster
from tts_operator.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "ttsservices.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]


def test_names_and_subresources() -> None:
    assert CRD["metadata"]["name"] == "ttsservices.tts.residency.dev"
    names = CRD["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("TTSService", "ttsservices", ["tts"])
    assert VERSION["name"] == "v1alpha1" and VERSION["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    columns = [(c["name"], c.get("priority", 0)) for c in VERSION["additionalPrinterColumns"]]
    assert columns[:6] == [("Ready", 0), ("GPU", 0), ("CPU", 0), ("Unloaded", 0), ("VRAM", 0), ("Age", 0)]
    assert {n for n, p in columns if p == 1} == {"Model", "Endpoint", "Last Used"}


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid_for_the_operator_too(path: Path) -> None:
    """The server accepts them (tests/charts/test_crd_examples.py); the operator's model reads them."""
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "TTSService":
            parse_spec(doc["spec"], doc["metadata"]["name"])


# Every bound of the schema, just past it, and what the real API server says about it.
BOUNDS = [
    ({}, "spec.model: Required value"),
    ({"model": {}}, "spec.model.name: Required value"),
    ({"model": {"name": "x"}, "replicas": -1}, "spec.replicas in body should be greater than or equal to 0"),
    ({"model": {"name": "x"}, "replicas": 101}, "spec.replicas in body should be less than or equal to 100"),
    ({"model": {"name": "x", "backend": "onnx"}}, 'spec.model.backend: Unsupported value: "onnx"'),
    ({"model": {"name": "x" * 64}}, "spec.model.name: Too long"),
    (
        {"model": {"name": "x"}, "residency": {"priority": 5000}},
        "spec.residency.priority in body should be less than or equal to 1000",
    ),
    (
        {"model": {"name": "x"}, "residency": {"priority": -1001}},
        "spec.residency.priority in body should be greater than or equal to -1000",
    ),
    (
        {"model": {"name": "x"}, "residency": {"idleOffloadSeconds": -1}},
        "spec.residency.idleOffloadSeconds in body should be greater than or equal to 0",
    ),
    ({"model": {"name": "x"}, "port": 0}, "spec.port in body should be greater than or equal to 1"),
    ({"model": {"name": "x"}, "port": 65536}, "spec.port in body should be less than or equal to 65535"),
    (
        {"model": {"name": "x"}, "gpu": {"count": -1}},
        "spec.gpu.count in body should be greater than or equal to 0",
    ),
    (
        {"model": {"name": "x"}, "gpu": {"memoryBudgetBytes": -1}},
        "spec.gpu.memoryBudgetBytes in body should be greater than or equal to 0",
    ),
    ({"model": {"name": "x"}, "imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy: Unsupported value"),
    ({"model": {"name": "x"}, "image": ""}, "spec.image in body should be at least 1 chars long"),
]


@pytest.mark.parametrize(("spec", "said"), BOUNDS, ids=[b[1][:50] for b in BOUNDS])
def test_the_server_refuses_each_bound(
    spec: dict[str, Any], said: str, kube_cluster: Cluster, namespace: str
) -> None:
    doc = {
        "apiVersion": "tts.residency.dev/v1alpha1",
        "kind": "TTSService",
        "metadata": {"name": "x"},
        "spec": spec,
    }
    done = kube_cluster.kubectl(
        "create", "-n", namespace, "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False
    )
    assert done.returncode != 0 and said in done.stderr, done.stderr


def test_cel_rules_have_messages() -> None:
    rules: list[dict[str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            rules.extend(node.get("x-kubernetes-validations", []))
            for value in node.values():
                walk(value)

    walk(VERSION["schema"]["openAPIV3Schema"])
    assert len(rules) >= 5 and all(r["rule"] and r["message"] for r in rules)
