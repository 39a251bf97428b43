"""The chart on a real API server: install it with the real helm, act with its ServiceAccounts' own tokens."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from chartlib import CHART_DIR

from support.cluster import Cluster

BASIC_GROUPS = ("authentication.k8s.io", "authorization.k8s.io")
Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def release_name(prefix: str = "rbac") -> str:
    """A release name of its own: the chart's ClusterRoles and admission policy are cluster-scoped."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@contextmanager
def installed(cluster: Cluster, release: str, namespace: str, *sets: str) -> Iterator[str]:
    """`helm install` the chart (the CRD is the session's, so not the chart's), uninstalled afterwards.
    Yields the operator's ServiceAccount name."""
    args = ["--set", "crds.install=false"]
    for value in sets:
        args += ["--set", value]
    cluster.helm("install", release, str(CHART_DIR), "-n", namespace, *args)
    try:
        yield f"{release}-residency-operator"
    finally:
        cluster.helm("uninstall", release, "-n", namespace, "--wait=false", check=False)


def token(cluster: Cluster, namespace: str, account: str, *bound: str) -> str:
    """A token of `account` (`kubectl create token`); `bound`: extra flags, e.g. --bound-object-kind Pod."""
    done = cluster.kubectl("create", "token", account, "-n", namespace, "--duration", "1h", *bound)
    return done.stdout.strip()


def pod_token(cluster: Cluster, namespace: str, account: str, pod: str) -> str:
    """A token bound to `pod`, as the kubelet mounts it: it names the pod (userInfo.extra pod-name)."""
    uid = cluster.kubectl("get", "pod", pod, "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    return token(
        cluster,
        namespace,
        account,
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        pod,
        "--bound-object-uid",
        uid,
    )


def as_token(cluster: Cluster, bearer: str, path: Path) -> Cluster:
    """The same API server, seen with `bearer` only (no client certificate): a kubeconfig at `path`."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [server],
                "users": [{"name": "token", "user": {"token": bearer}}],
                "contexts": [{"name": "token", "context": {"cluster": server["name"], "user": "token"}}],
                "current-context": "token",
            }
        )
    )
    path.chmod(0o600)
    return Cluster(path)


def rules(client: Cluster, namespace: str) -> set[Grant]:
    """What `client` may do in `namespace`, from a SelfSubjectRulesReview sent with its own credentials,
    without the self-review rules every authenticated user holds. Fails on a rule narrowed by name."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": namespace},
    }
    answer: dict[str, Any] = json.loads(
        client.kubectl("create", "--validate=false", "-f", "-", "-o", "json", input=json.dumps(review)).stdout
    )
    status = answer["status"]
    assert not status.get("incomplete"), status
    granted: set[Grant] = set()
    for rule in status["resourceRules"]:
        assert not rule.get("resourceNames"), rule
        granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return {(g, r, v) for g, r, v in granted if not (g in BASIC_GROUPS and r.startswith("selfsubject"))}


def grants(table: dict[tuple[str, str], str]) -> set[Grant]:
    """{(group, resource): "verb verb"} -> the set of (group, resource, verb)."""
    return {(g, r, v) for (g, r), verbs in table.items() for v in verbs.split()}
