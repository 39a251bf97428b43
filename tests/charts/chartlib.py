"""Helpers for the chart tests: repository paths and offline rendering of charts/residency into objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "residency"
CRD_SOURCE = REPO / "crds" / "ttsservices.yaml"
CRD_CHART_COPY = CHART_DIR / "files" / "ttsservices.yaml"
RELEASE = "residency"
NAMESPACE = "residency-system"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.30.0", "1.37.0")


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, exactly what `helm template` would produce for an install."""
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object the rendered chart would apply (NOTES.txt is not an object)."""
    found: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                assert isinstance(doc, dict), f"{path} renders a YAML document that is not an object"
                found.append(doc)
    return found


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matching = by_kind(objs, kind)
    assert len(matching) == 1, f"expected one {kind}, rendered {len(matching)}"
    return matching[0]
