"""Every example TTSService is accepted by a real API server; every deliberately bad one is refused there,
with the server's own message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from chartlib import CRD_SOURCE, REPO, render

from support.cluster import Cluster

BAD_DIR = Path(__file__).parent / "bad"
EXPECT = "# expect:"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
BAD = sorted(BAD_DIR.glob("*.yaml"))


def _crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_SOURCE.read_text())
    return crd


def _tts_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "TTSService"]


def _dry_run(cluster: Cluster, namespace: str, manifest: str) -> tuple[int, str]:
    """`kubectl apply --dry-run=server` (strict field validation, as kubectl does by default)."""
    done = cluster.kubectl(
        "apply", "-n", namespace, "--dry-run=server", "-f", "-", input=manifest, check=False
    )
    return done.returncode, done.stdout + done.stderr


def test_there_are_examples_and_bad_examples() -> None:
    assert any(_tts_docs(p) for p in EXAMPLES), "examples/ has no TTSService"
    assert len(BAD) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_accepted(path: Path, kube_cluster: Cluster, namespace: str) -> None:
    for doc in _tts_docs(path):
        code, said = _dry_run(kube_cluster, namespace, yaml.safe_dump(doc))
        assert code == 0, f"{path.name}: {doc['metadata']['name']}: {said}"


@pytest.mark.parametrize("path", BAD, ids=[p.name for p in BAD])
def test_bad_example_is_refused_for_its_reason(path: Path, kube_cluster: Cluster, namespace: str) -> None:
    expect = [
        line.removeprefix(EXPECT).strip() for line in path.read_text().splitlines() if line.startswith(EXPECT)
    ]
    assert len(expect) == 1, f"{path.name} needs one '{EXPECT} <part of the server's message>' line"
    code, said = _dry_run(kube_cluster, namespace, path.read_text())
    assert code != 0, f"{path.name} was accepted"
    assert expect[0] in said, said


def test_notes_example_is_accepted(chart: helm.Chart, kube_cluster: Cluster, namespace: str) -> None:
    notes = next(text for name, text in render(chart).items() if name.endswith("NOTES.txt"))
    block = notes.split("kubectl apply -f -", 1)[1].split("YAML\n", 1)[0]
    doc = yaml.safe_load("\n".join(line.removeprefix("  ") for line in block.splitlines()))
    assert doc["kind"] == "TTSService"
    code, said = _dry_run(kube_cluster, namespace, yaml.safe_dump(doc))
    assert code == 0, said


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
    assert messages, "the CRD has no CEL rules: drop this test"
    expects = [line for p in BAD for line in p.read_text().splitlines() if line.startswith(EXPECT)]
    for message in messages:
        assert any(line.removeprefix(EXPECT).strip() in message for line in expects), message


def test_the_residency_default_is_the_documented_policy(kube_cluster: Cluster, namespace: str) -> None:
    """The server fills in `residency` (checked against its CEL rule) and every nested default."""
    doc = {
        "apiVersion": "tts.residency.dev/v1alpha1",
        "kind": "TTSService",
        "metadata": {"name": "defaults", "namespace": namespace},
        "spec": {"model": {"name": "hibari"}},
    }
    kube_cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(doc))
    spec = kube_cluster.json("get", "tts", "defaults", "-n", namespace)["spec"]
    assert spec["residency"] == {
        "offloadAfterUse": True,
        "idleOffloadSeconds": 600,
        "idleReleaseSeconds": 3600,
        "pinned": False,
        "priority": 0,
    }
    assert spec["gpu"] == {
        "count": 1,
        "resourceName": "nvidia.com/gpu",
        "sharing": {"mode": "exclusive", "placement": "scheduler"},
    }
    assert spec["model"] == {"name": "hibari", "variant": "base", "backend": "hibari"}
    assert spec["replicas"] == 1 and spec["port"] == 8000
