"""The release path: one version in every place scripts/release.sh checks, and a chart packaged with it."""

from __future__ import annotations

import subprocess
import tarfile
import tomllib
from pathlib import Path

import yaml
from chartlib import CHART_DIR, REPO

from support.cluster import tool

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
RELEASE = REPO / "scripts" / "release.sh"


def test_the_project_version_is_written_everywhere() -> None:
    done = subprocess.run(
        ["bash", str(RELEASE), VERSION, "--check"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr


def test_another_version_is_refused_naming_each_place() -> None:
    done = subprocess.run(
        ["bash", str(RELEASE), "99.0.0", "--check"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    for place in ("pyproject.toml", "Chart.yaml", "settings.py", "Dockerfile"):
        assert place in done.stderr, done.stderr


def test_the_packaged_chart_defaults_to_the_released_images(tmp_path: Path) -> None:
    """What release.sh packages: chart version = appVersion = the images' tag the chart renders."""
    helm = tool("helm")
    subprocess.run(
        [
            helm,
            "package",
            str(CHART_DIR),
            "--version",
            VERSION,
            "--app-version",
            VERSION,
            "--destination",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    package = tmp_path / f"residency-{VERSION}.tgz"
    with tarfile.open(package) as tar:
        meta = yaml.safe_load(tar.extractfile("residency/Chart.yaml").read())  # type: ignore[union-attr]
    assert (meta["version"], meta["appVersion"]) == (VERSION, VERSION)
    rendered = subprocess.run(
        [helm, "template", "r", str(package), "--set", "crds.install=false"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    images = {
        line.split("image:")[1].strip().strip('"') for line in rendered.splitlines() if "image:" in line
    }
    assert images == {f"ghcr.io/residency-dev/residency-operator:{VERSION}"}, images
    assert f'value: "ghcr.io/residency-dev/residency-runtime:{VERSION}"' in rendered
