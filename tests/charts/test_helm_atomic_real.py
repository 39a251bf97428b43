"""`helm install/upgrade --rollback-on-failure` on a real API server: a failed release leaves nothing behind.

The failure is a real one: with no kubelet here the operator's Deployment never becomes available, so a
waiting install or upgrade times out, as it would on a cluster that cannot pull the image.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from chartlib import CHART_DIR
from realchart import release_name

from support.cluster import Cluster

pytestmark = pytest.mark.slow

NAMESPACED = "serviceaccounts,deployments,roles,rolebindings,networkpolicies"
CLUSTER_SCOPED = (
    "clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings"
)


def _left(cluster: Cluster, release: str, *namespaces: str) -> list[str]:
    """Every object labelled with the release (Helm's own release Secrets included), by kind/name."""
    found: list[str] = []
    selector = f"app.kubernetes.io/instance={release}"
    for ns in namespaces:
        found += cluster.kubectl("get", NAMESPACED, "-n", ns, "-l", selector, "-o", "name").stdout.split()
        found += cluster.kubectl(
            "get", "secrets", "-n", ns, "-l", f"name={release},owner=helm", "-o", "name"
        ).stdout.split()
    found += cluster.kubectl("get", CLUSTER_SCOPED, "-l", selector, "-o", "name").stdout.split()
    return sorted(set(found))


@pytest.fixture
def release(kube_cluster: Cluster, namespace: str) -> Iterator[str]:
    name = release_name("atomic")
    try:
        yield name
    finally:
        kube_cluster.helm("uninstall", name, "-n", namespace, "--wait=false", check=False)


def test_failed_install_leaves_nothing(kube_cluster: Cluster, namespace: str, release: str) -> None:
    done = kube_cluster.helm(
        "install",
        release,
        str(CHART_DIR),
        "-n",
        namespace,
        "--set",
        "crds.install=false",
        "--rollback-on-failure",
        "--timeout",
        "15s",
        check=False,
    )
    assert done.returncode != 0, done.stdout
    assert "uninstall" in done.stderr.lower(), done.stderr
    assert _left(kube_cluster, release, namespace) == []
    assert kube_cluster.helm("list", "-n", namespace, "-q").stdout.split() == []


def test_failed_upgrade_rolls_back(kube_cluster: Cluster, namespace: str, release: str) -> None:
    watched = kube_cluster.create_namespace("watched")
    try:
        kube_cluster.helm("install", release, str(CHART_DIR), "-n", namespace, "--set", "crds.install=false")
        before = _left(kube_cluster, release, namespace, watched)
        assert any(name.startswith("clusterrole.") for name in before), before
        done = kube_cluster.helm(
            "upgrade",
            release,
            str(CHART_DIR),
            "-n",
            namespace,
            "--reuse-values",
            "--set",
            f"operator.watchNamespaces={{{watched}}}",
            "--rollback-on-failure",
            "--timeout",
            "15s",
            check=False,
        )
        assert done.returncode != 0, done.stdout
        assert "rolling back" in done.stderr, done.stderr
        # The first revision's objects, and none of the failed one's (its Roles in `watched`): Helm's
        # release Secrets aside, which record the history.
        after = [
            name
            for name in _left(kube_cluster, release, namespace, watched)
            if not name.startswith("secret/sh.helm.release")
        ]
        assert after == [name for name in before if not name.startswith("secret/sh.helm.release")]
        # Revision 3 is the rollback to revision 1. Here it is marked failed too, because it waits for the
        # operator like the install did (no kubelet); its objects are revision 1's all the same.
        history = json.loads(kube_cluster.helm("history", release, "-n", namespace, "-o", "json").stdout)
        assert [h["revision"] for h in history] == [1, 2, 3], history
        assert history[1]["status"] == "failed", history
    finally:
        kube_cluster.delete_namespace(watched)
