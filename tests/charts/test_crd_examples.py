"""Every example TTSService validates against the CRD; every deliberately bad one fails for its reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from chartlib import CRD_SOURCE, REPO, render

from support.crd_schema import violations

BAD_DIR = Path(__file__).parent / "bad"
EXPECT = "# expect:"


def _crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_SOURCE.read_text())
    return crd


def _tts_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "TTSService"]


EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
BAD = sorted(BAD_DIR.glob("*.yaml"))


def test_there_are_examples_and_bad_examples() -> None:
    assert any(_tts_docs(p) for p in EXAMPLES), "examples/ has no TTSService"
    assert len(BAD) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates(path: Path) -> None:
    for doc in _tts_docs(path):
        assert violations(_crd(), doc) == [], f"{path.name}: {doc['metadata']['name']}"


@pytest.mark.parametrize("path", BAD, ids=[p.name for p in BAD])
def test_bad_example_is_rejected_for_its_reason(path: Path) -> None:
    expect = [
        line.removeprefix(EXPECT).strip() for line in path.read_text().splitlines() if line.startswith(EXPECT)
    ]
    assert len(expect) == 1, f"{path.name} needs one '{EXPECT} <part of the error>' line"
    (doc,) = _tts_docs(path)
    found = violations(_crd(), doc)
    assert found, f"{path.name} was accepted"
    assert any(expect[0] in v for v in found), found


def test_notes_example_validates(chart: helm.Chart) -> None:
    notes = next(text for name, text in render(chart).items() if name.endswith("NOTES.txt"))
    block = notes.split("kubectl apply -f -", 1)[1].split("YAML\n", 1)[0]
    doc = yaml.safe_load("\n".join(line.removeprefix("  ") for line in block.splitlines()))
    assert doc["kind"] == "TTSService"
    assert violations(_crd(), doc) == []


def test_every_cel_rule_has_a_bad_example_that_breaks_it() -> None:
    def rules(node: Any) -> list[str]:
        found: list[str] = []
        if isinstance(node, dict):
            found += [r.get("message", r["rule"]) for r in node.get("x-kubernetes-validations", [])]
            for child in node.values():
                found += rules(child)
        elif isinstance(node, list):
            for child in node:
                found += rules(child)
        return found

    messages = rules(_crd()["spec"]["versions"])
    assert messages, "the CRD has no CEL rules: drop this test and the CEL evaluation"
    expects = [line for p in BAD for line in p.read_text().splitlines() if line.startswith(EXPECT)]
    for message in messages:
        assert any(line.removeprefix(EXPECT).strip() in message for line in expects), message
