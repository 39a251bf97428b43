"""The CRD: names, printer columns, schema that accepts the examples and rejects bad specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tts_operator.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "ttsservices.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]


def _json_schema(node: Any) -> Any:
    """openAPIV3Schema minus the Kubernetes extensions jsonschema does not know (CEL is tested apart)."""
    if isinstance(node, dict):
        return {k: _json_schema(v) for k, v in node.items()
                if not k.startswith("x-kubernetes") and k != "nullable"}
    if isinstance(node, list):
        return [_json_schema(v) for v in node]
    return node


SCHEMA = _json_schema(VERSION["schema"]["openAPIV3Schema"])


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
def test_examples_are_valid(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        jsonschema.validate(doc, SCHEMA)
        parse_spec(doc["spec"], doc["metadata"]["name"])


@pytest.mark.parametrize("spec", [{}, {"model": {}}, {"model": {"name": "x"}, "replicas": -1},
                                  {"model": {"name": "x", "backend": "onnx"}},
                                  {"model": {"name": "x"}, "residency": {"priority": 5000}},
                                  {"model": {"name": "x"}, "port": 0}])
def test_schema_rejects_bad_specs(spec: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"apiVersion": "tts.residency.dev/v1alpha1", "kind": "TTSService",
                             "metadata": {"name": "x"}, "spec": spec}, SCHEMA)


def test_cel_rules_have_messages() -> None:
    rules: list[dict[str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            rules.extend(node.get("x-kubernetes-validations", []))
            for value in node.values():
                walk(value)

    walk(VERSION["schema"]["openAPIV3Schema"])
    assert len(rules) >= 5 and all(r["rule"] and r["message"] for r in rules)
