"""The CRD and the examples on a real API server: it installs, and every example is accepted."""

from __future__ import annotations

from pathlib import Path

from support.cluster import ROOT, Cluster


def test_examples_apply_on_the_real_server(kube_cluster: Cluster, namespace: str) -> None:
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        done = kube_cluster.kubectl("apply", "-n", namespace, "-f", str(example))
        assert "created" in done.stdout, done.stdout
    table = kube_cluster.kubectl("get", "tts", "-n", namespace).stdout
    assert table.split()[:2] == ["NAME", "READY"], table


def test_bad_files_are_refused(kube_cluster: Cluster, namespace: str) -> None:
    for bad in sorted((ROOT / "tests" / "charts" / "bad").glob("*.yaml")):
        done = kube_cluster.kubectl("apply", "-n", namespace, "-f", str(bad), "--dry-run=server", check=False)
        assert done.returncode != 0, f"{Path(bad).name} was accepted"
