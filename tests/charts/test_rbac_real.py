"""Least privilege on a real API server: the chart's RBAC, the operator and agent run with their own tokens.

Both chart modes: cluster-wide (a ClusterRole) and `operator.watchNamespaces` (Roles only). The operator
and the agent run as processes here, authenticated only by `kubectl create token` of their ServiceAccounts;
the flow (children, policy edit, a deleted child put back, scale, agent reports, status, delete) must
succeed without one 403 or ERROR line.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from realchart import Grant, as_token, grants, installed, pod_token, release_name, rules, token

from support.cluster import ROOT, Cluster
from support.procs import Process, executable, free_port, start_runtime, wait_for
from tts_contract import annotations as ann
from tts_contract import names

pytestmark = pytest.mark.slow

# Exactly what the operator sends in a namespace it reconciles (templates/rbac.yaml says which call needs
# each): GET, LIST, WATCH, POST, PATCH; PATCH alone on status; DELETE of its (immutable) DRA claim templates
# only. No update, nothing else.
OPERATOR: set[Grant] = grants(
    {
        ("tts.residency.dev", "ttsservices"): "get list watch patch",
        ("tts.residency.dev", "ttsservices/status"): "patch",
        ("apps", "deployments"): "get list watch create patch",
        ("", "services"): "get list watch create patch",
        ("", "serviceaccounts"): "get list watch create patch",
        ("rbac.authorization.k8s.io", "roles"): "get list watch create patch",
        ("rbac.authorization.k8s.io", "rolebindings"): "get list watch create patch",
        ("", "pods"): "get list watch patch",
        ("", "events"): "create",
        # GPU sharing mode dra (rbac.dra, on by default): claim allocations, and the claim templates it owns.
        ("resource.k8s.io", "resourceclaims"): "list watch",
        ("resource.k8s.io", "resourceclaimtemplates"): "get list watch create delete",
    }
)
# Cluster-wide mode only: Kopf follows the CRD (installed or changed while it runs).
OPERATOR_CLUSTER: set[Grant] = grants({("apiextensions.k8s.io", "customresourcedefinitions"): "list watch"})
# The agent's Role (made by the operator, builders.build_role): its own pod is fenced in by admission.
AGENT: set[Grant] = grants({("", "pods"): "get list watch patch"})
# A 403 is a status, not the milliseconds of a log line's timestamp ("[... 08:03:46,403]").
PROBLEM = re.compile(
    r"(?<![,.:])\b403\b|forbidden|not enough permissions|failed to post|\[ERROR|Traceback", re.IGNORECASE
)
MODES = {"cluster-wide": False, "watchNamespaces": True}


@pytest.fixture
def elsewhere(kube_cluster: Cluster) -> Iterator[str]:
    """A second namespace: where the chart is installed (and, in watchNamespaces mode, not watched)."""
    name = kube_cluster.create_namespace("rel")
    try:
        yield name
    finally:
        kube_cluster.delete_namespace(name)


def _chart_values(namespaced: bool, watched: str) -> list[str]:
    return [f"operator.watchNamespaces={{{watched}}}"] if namespaced else []


@pytest.mark.parametrize("mode", MODES)
def test_operator_holds_exactly_what_it_sends(
    kube_cluster: Cluster, namespace: str, elsewhere: str, tmp_path: Path, mode: str
) -> None:
    namespaced = MODES[mode]
    with installed(kube_cluster, release_name(), elsewhere, *_chart_values(namespaced, namespace)) as sa:
        bearer = token(kube_cluster, elsewhere, sa)
        operator = as_token(kube_cluster, bearer, tmp_path / "operator.kubeconfig")
        if namespaced:
            assert rules(operator, namespace) == OPERATOR
            # Nothing anywhere else, nothing cluster-wide: not even namespaces or the CRD.
            assert rules(operator, elsewhere) == set()
            for verb, resource in (
                ("list", "namespaces"),
                ("list", "customresourcedefinitions"),
                ("list", "pods"),
            ):
                done = operator.kubectl("auth", "can-i", verb, resource, "--all-namespaces", check=False)
                assert done.stdout.strip() == "no", (verb, resource, done.stdout)
        else:
            assert rules(operator, namespace) == OPERATOR | OPERATOR_CLUSTER
            assert rules(operator, elsewhere) == OPERATOR | OPERATOR_CLUSTER
            done = operator.kubectl("auth", "can-i", "list", "namespaces", check=False)
            assert done.stdout.strip() == "no", done.stdout


def _children(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for kind in ("deployment", "service", "serviceaccount", "role", "rolebinding"):
        items = cluster.json("get", kind, "-n", namespace, "-l", f"{names.SERVICE_LABEL}=hibari")["items"]
        for item in items:
            found[f"{kind}/{item['metadata']['name']}"] = item
    return found


def _pods(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.json(
        "get", "pods", "-n", namespace, "-l", f"{names.SERVICE_LABEL}=hibari"
    )["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _annotation(pod: dict[str, Any], key: str) -> str | None:
    value: str | None = (pod["metadata"].get("annotations") or {}).get(key)
    return value


def _policies(cluster: Cluster, namespace: str) -> list[float | None]:
    """idleOffloadSeconds of each pod's policy annotation (None: not written yet)."""
    out: list[float | None] = []
    for pod in _pods(cluster, namespace):
        raw = _annotation(pod, ann.POLICY)
        out.append(None if raw is None else float(json.loads(raw)["idleOffloadSeconds"]))
    return out


def _start_operator(
    cluster: Cluster, admin: Cluster, release_ns: str, release: str, tmp_path: Path
) -> Process:
    """`tts-operator` with the arguments and environment of the chart's Deployment, as its ServiceAccount."""
    (deployment,) = admin.json(
        "get", "deployments", "-n", release_ns, "-l", f"app.kubernetes.io/instance={release}"
    )["items"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = list(container["args"])
    args[args.index("--liveness") + 1] = f"http://127.0.0.1:{free_port()}/healthz"
    env = {**cluster.env, **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e}}
    return Process([executable("tts-operator"), *args], env, tmp_path / "operator.log")


def _clean(process: Process, what: str) -> None:
    text = process.logs()
    bad = [line for line in text.splitlines() if PROBLEM.search(line)]
    assert not bad, f"{what} logged problems:\n" + "\n".join(bad[:20])


@pytest.mark.parametrize("mode", MODES)
def test_full_flow_with_the_components_own_tokens(
    kube_cluster: Cluster, namespace: str, elsewhere: str, tmp_path: Path, mode: str
) -> None:
    namespaced = MODES[mode]
    release = release_name()
    with installed(kube_cluster, release, elsewhere, *_chart_values(namespaced, namespace)) as sa:
        bearer = token(kube_cluster, elsewhere, sa)
        operator_client = as_token(kube_cluster, bearer, tmp_path / "op.kubeconfig")
        operator = _start_operator(operator_client, kube_cluster, elsewhere, release, tmp_path)
        runtime = agent = None
        try:
            # Created: every child, promptly (watchNamespaces mode used to retry namespace listing ~1 min).
            kube_cluster.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "ttsservice.yaml"))
            started = time.monotonic()
            wait_for(
                lambda: len(_children(kube_cluster, namespace)) == 5,
                timeout=30,
                interval=0.2,
                what="the five children",
            )
            first_children_s = time.monotonic() - started
            assert first_children_s < 20, first_children_s
            wait_for(
                lambda: _policies(kube_cluster, namespace) == [600.0],
                timeout=30,
                interval=0.2,
                what="the policy annotation on the first pod",
            )

            # Policy edit: the pods' annotation follows, no rollout.
            kube_cluster.kubectl(
                "patch",
                "tts",
                "hibari",
                "-n",
                namespace,
                "--type=merge",
                "-p",
                '{"spec": {"residency": {"idleOffloadSeconds": 123}}}',
            )
            wait_for(
                lambda: _policies(kube_cluster, namespace) == [123.0],
                timeout=30,
                interval=0.2,
                what="the edited policy on the pod",
            )

            # A child deleted by hand is put back.
            old_uid = _children(kube_cluster, namespace)["service/hibari"]["metadata"]["uid"]
            kube_cluster.kubectl("delete", "service", "hibari", "-n", namespace)
            wait_for(
                lambda: (
                    (
                        _children(kube_cluster, namespace).get("service/hibari")
                        or {"metadata": {"uid": old_uid}}
                    )["metadata"]["uid"]
                    != old_uid
                ),
                timeout=30,
                interval=0.2,
                what="the deleted Service re-created",
            )

            # Scale: two pods, each with the policy.
            kube_cluster.kubectl(
                "patch", "tts", "hibari", "-n", namespace, "--type=merge", "-p", '{"spec": {"replicas": 2}}'
            )
            wait_for(
                lambda: _policies(kube_cluster, namespace) == [123.0, 123.0],
                timeout=30,
                interval=0.2,
                what="two pods with the policy",
            )

            # The agent of the first pod, with a token bound to that pod (what the kubelet mounts), next
            # to a real runtime: its residency report lands on its pod, the operator's status follows.
            pod = _pods(kube_cluster, namespace)[0]["metadata"]["name"]
            agent_client = as_token(
                kube_cluster,
                pod_token(kube_cluster, namespace, "hibari-agent", pod),
                tmp_path / "agent.kubeconfig",
            )
            assert rules(agent_client, namespace) == AGENT
            token_file = tmp_path / "admin-token"
            runtime = start_runtime(
                tmp_path / "runtime.log",
                "--host",
                "127.0.0.1",
                "--admin-token-file",
                str(token_file),
                "--log-level",
                "warning",
                timeout=180,
            )
            agent = Process(
                [
                    executable("tts-operator"),
                    "agent",
                    "--pod",
                    pod,
                    "--namespace",
                    namespace,
                    "--runtime-url",
                    runtime.url,
                    "--admin-token-file",
                    str(token_file),
                    "--health-host",
                    "127.0.0.1",
                    "--health-port",
                    "0",
                ],
                agent_client.env,
                tmp_path / "agent.log",
            )

            def reported() -> bool:
                found = [p for p in _pods(kube_cluster, namespace) if p["metadata"]["name"] == pod]
                return bool(found) and _annotation(found[0], ann.RESIDENCY) is not None

            wait_for(reported, timeout=60, interval=0.2, what="the agent's residency annotation")

            def counted() -> bool:
                status = kube_cluster.json("get", "tts", "hibari", "-n", namespace).get("status") or {}
                reports = sum((status.get("pods") or {}).values())
                return int(status.get("replicas", 0)) == 2 and reports == 1

            wait_for(counted, timeout=30, interval=0.2, what="the operator's status: two pods, one report")
            # The agent goes before its pod does: deleting the TTSService takes its Role away (a 403 then
            # would be the garbage collector's doing, not a missing rule).
            agent.stop()
            runtime.stop()

            # Deleted: the TTSService goes, its children with it (garbage collection of owned objects).
            kube_cluster.kubectl("delete", "tts", "hibari", "-n", namespace, "--timeout=30s")
            wait_for(
                lambda: not _children(kube_cluster, namespace),
                timeout=60,
                interval=0.2,
                what="the children garbage-collected",
            )
        finally:
            for process in (agent, runtime, operator):
                if process is not None:
                    process.stop()
        _clean(operator, "the operator")
        assert agent is not None
        _clean(agent, "the agent")
