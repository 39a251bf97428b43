"""The chart with the real `helm` 4 on the real API server: install, upgrade (values, CRD), uninstall."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartlib import CHART_DIR

from support.cluster import Cluster

CRD = "ttsservices.tts.residency.dev"
HELM_LABELS = (
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/name",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "helm.sh/chart",
)
EXAMPLE = {
    "apiVersion": "tts.residency.dev/v1alpha1",
    "kind": "TTSService",
    "metadata": {"name": "kept"},
    "spec": {"model": {"name": "hibari"}},
}


@pytest.fixture()
def release(kube_cluster: Cluster, namespace: str) -> Iterator[str]:
    """A release name; the session's CRD is handed to it (as `helm install` would adopt a CRD applied by
    hand, given Helm's ownership metadata) and given back to the session, unchanged, at the end."""
    name = f"r-{namespace}"
    kube_cluster.kubectl("label", "crd", CRD, "app.kubernetes.io/managed-by=Helm", "--overwrite")
    kube_cluster.kubectl(
        "annotate",
        "crd",
        CRD,
        f"meta.helm.sh/release-name={name}",
        f"meta.helm.sh/release-namespace={namespace}",
        "--overwrite",
    )
    try:
        yield name
    finally:
        kube_cluster.helm("uninstall", name, "-n", namespace, "--ignore-not-found", check=False)
        kube_cluster.kubectl(
            "delete",
            "clusterrole,clusterrolebinding",
            "-l",
            f"app.kubernetes.io/instance={name}",
            "--ignore-not-found",
            check=False,
        )
        kube_cluster.kubectl(
            "annotate",
            "crd",
            CRD,
            "meta.helm.sh/release-name-",
            "meta.helm.sh/release-namespace-",
            "helm.sh/resource-policy-",
            check=False,
        )
        kube_cluster.kubectl("label", "crd", CRD, *(f"{key}-" for key in HELM_LABELS), check=False)
        kube_cluster.apply_crds()  # the session's CRD again, whatever the upgrade made of it


def _objects(cluster: Cluster, namespace: str, release: str) -> dict[str, list[str]]:
    """The release's objects on the server, by kind (cluster-wide ones included)."""
    selector = f"app.kubernetes.io/instance={release}"
    found: dict[str, list[str]] = {}
    namespaced = "deployments,serviceaccounts,roles,rolebindings,networkpolicies"
    for kinds, scope in ((namespaced, ["-n", namespace]), ("clusterroles,clusterrolebindings", [])):
        for item in cluster.json("get", kinds, "-l", selector, *scope)["items"]:
            found.setdefault(item["kind"], []).append(item["metadata"]["name"])
    return {kind: sorted(names) for kind, names in sorted(found.items())}


def _deployment(cluster: Cluster, namespace: str, release: str) -> dict[str, Any]:
    items = cluster.json(
        "get", "deployments", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}"
    )["items"]
    assert len(items) == 1, items
    deployment: dict[str, Any] = items[0]
    return deployment


def test_install_upgrade_and_uninstall(
    kube_cluster: Cluster, namespace: str, release: str, tmp_path: Path
) -> None:
    # Install: every object is accepted by the server (schema, RBAC escalation checks, the CRD's CEL).
    done = kube_cluster.helm("install", release, str(CHART_DIR), "-n", namespace)
    assert "STATUS: deployed" in done.stdout, done.stdout
    objects = _objects(kube_cluster, namespace, release)
    assert objects.get("Deployment") and objects.get("ServiceAccount"), objects
    assert objects.get("ClusterRole") and objects.get("ClusterRoleBinding") and "Role" not in objects, objects
    crd = kube_cluster.json("get", "crd", CRD)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(EXAMPLE))

    # Upgrade with changed values: the Deployment follows; a watched namespace gets its Role.
    kube_cluster.helm(
        "upgrade",
        release,
        str(CHART_DIR),
        "-n",
        namespace,
        "--set",
        "operator.extraArgs={--verbose}",
        "--set",
        f"operator.watchNamespaces={{{namespace}}}",
    )
    args = _deployment(kube_cluster, namespace, release)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--verbose" in args and ["--namespace", namespace] == args[args.index("--namespace") :][:2], args
    objects = _objects(kube_cluster, namespace, release)
    assert objects.get("Role"), objects

    # Upgrade with a changed CRD (a new printer column): the server serves the new schema.
    chart = tmp_path / "residency"
    shutil.copytree(CHART_DIR, chart)
    source = chart / "files" / "ttsservices.yaml"
    changed = yaml.safe_load(source.read_text())
    changed["spec"]["versions"][0]["additionalPrinterColumns"].append(
        {"name": "Variant", "type": "string", "jsonPath": ".spec.model.variant", "priority": 1}
    )
    source.write_text(yaml.safe_dump(changed))
    # The session applied the CRD with `kubectl apply --server-side`, so kubectl co-owns its fields: Helm 4
    # (server-side apply too) takes them over only when told to, as anyone upgrading such a CRD must.
    refused = kube_cluster.helm(
        "upgrade", release, str(chart), "-n", namespace, "--reuse-values", check=False
    )
    assert refused.returncode != 0 and 'conflict with "kubectl": .spec.versions' in refused.stderr, refused
    kube_cluster.helm("upgrade", release, str(chart), "-n", namespace, "--reuse-values", "--force-conflicts")
    columns = kube_cluster.json("get", "crd", CRD)["spec"]["versions"][0]["additionalPrinterColumns"]
    assert columns[-1]["name"] == "Variant", columns
    wide = kube_cluster.kubectl("get", "tts", "kept", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-1] == "VARIANT" and wide[1].split()[-1] == "base", wide

    # Uninstall: the release's objects go; the CRD (and with it every TTSService) stays.
    kube_cluster.helm("uninstall", release, "-n", namespace, "--wait")
    assert _objects(kube_cluster, namespace, release) == {}
    assert kube_cluster.json("get", "tts", "kept", "-n", namespace)["metadata"]["name"] == "kept"
