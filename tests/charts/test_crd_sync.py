"""The chart carries the same CRD as crds/ttsservices.yaml, and scripts/sync-crd.sh keeps it so."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from chartlib import CRD_CHART_COPY, CRD_SOURCE, REPO, objects, one, render

SCRIPT = REPO / "scripts" / "sync-crd.sh"


def _without_chart_metadata(crd: dict[str, Any]) -> dict[str, Any]:
    """The CRD minus what the chart adds (labels, annotations), to compare with the source of truth."""
    stripped = dict(crd, metadata=dict(crd["metadata"]))
    stripped["metadata"].pop("labels", None)
    stripped["metadata"].pop("annotations", None)
    return stripped


def _run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=30)


def test_chart_copy_is_byte_identical_to_crds() -> None:
    assert CRD_SOURCE.is_file(), "crds/ttsservices.yaml (the source of truth) is missing"
    assert CRD_CHART_COPY.read_bytes() == CRD_SOURCE.read_bytes(), "run scripts/sync-crd.sh"
    result = _run(SCRIPT, "--check")
    assert result.returncode == 0, result.stderr


def test_rendered_crd_equals_crds_plus_keep_policy(chart: helm.Chart) -> None:
    source = yaml.safe_load(CRD_SOURCE.read_text())
    rendered = one(objects(render(chart)), "CustomResourceDefinition")
    assert _without_chart_metadata(rendered) == _without_chart_metadata(source)
    assert rendered["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # The source's own labels and annotations survive; the chart only adds to them.
    assert source["metadata"].get("labels", {}).items() <= rendered["metadata"]["labels"].items()
    assert source["metadata"].get("annotations", {}).items() <= rendered["metadata"]["annotations"].items()
    assert rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_crd_can_be_released_on_uninstall(chart: helm.Chart) -> None:
    rendered = one(objects(render(chart, {"crds": {"keep": False}})), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in rendered["metadata"].get("annotations", {})


def test_sync_script_copies_and_checks(tmp_path: Path) -> None:
    script = tmp_path / "scripts" / "sync-crd.sh"
    script.parent.mkdir()
    shutil.copy(SCRIPT, script)
    (tmp_path / "crds").mkdir()
    source = tmp_path / "crds" / "ttsservices.yaml"

    missing = _run(script)
    assert missing.returncode == 1 and "not found" in missing.stderr

    source.write_text("kind: CustomResourceDefinition\n")
    assert _run(script, "--check").returncode == 1  # no copy yet
    assert _run(script).returncode == 0
    copy = tmp_path / "charts" / "residency" / "files" / "ttsservices.yaml"
    assert copy.read_text() == source.read_text()
    assert _run(script, "--check").returncode == 0

    source.write_text("kind: CustomResourceDefinition\n# changed\n")
    drift = _run(script, "--check")
    assert drift.returncode == 1 and "run scripts/sync-crd.sh" in drift.stderr
    assert copy.read_text() != source.read_text(), "--check never writes"

    bad = _run(script, "--force")
    assert bad.returncode == 2 and "--force" in bad.stderr


def test_packaged_chart_still_carries_the_crd(tmp_path: Path) -> None:
    # .helmignore must not drop files/: `helm package` is how the chart is published.
    archive = helm.package(REPO / "charts" / "residency", destination=tmp_path)
    with helm.Chart.load(archive) as packaged:
        rendered = one(objects(render(packaged)), "CustomResourceDefinition")
    source = yaml.safe_load(CRD_SOURCE.read_text())
    assert _without_chart_metadata(rendered) == _without_chart_metadata(source)
