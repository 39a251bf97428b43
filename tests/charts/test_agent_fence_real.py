"""The admission policy on a real API server: an agent may touch only its own pod's residency annotations.

The agent's ServiceAccount, Role and RoleBinding and the Deployment are the operator's own children
(`build_children` of a real TTSService), the pods come from the real Deployment controller, and every call
below is sent with a token of the agent's ServiceAccount, bound to one pod as the kubelet mounts it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from realchart import as_token, installed, pod_token, release_name, token

from support.cluster import ROOT, Cluster
from support.procs import wait_for
from tts_contract import annotations as ann
from tts_contract import names
from tts_operator.builders import Images, Owner, build_children
from tts_operator.spec import parse_spec

pytestmark = pytest.mark.slow

POLICY = "ValidatingAdmissionPolicy"


@dataclass
class Fenced:
    namespace: str
    own: str  # the pod the agent's token is bound to
    other: str  # its neighbour, same TTSService
    agent: Cluster  # the agent's pod-bound token
    unbound: Cluster  # a token of the same ServiceAccount, bound to no pod
    admin: Cluster


@pytest.fixture(scope="module")
def fenced(kube_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fenced]:
    namespace = kube_cluster.create_namespace("fence")
    tmp = tmp_path_factory.mktemp("fence")
    try:
        with installed(kube_cluster, release_name("fence"), namespace):
            manifest = yaml.safe_load((ROOT / "examples" / "ttsservice.yaml").read_text())
            manifest["spec"]["replicas"] = 2
            kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
            service = kube_cluster.json("get", "tts", "hibari", "-n", namespace)
            spec = parse_spec(service["spec"], "hibari")
            owner = Owner("hibari", namespace, service["metadata"]["uid"], spec)
            children = {"apiVersion": "v1", "kind": "List", "items": build_children(owner, Images())}
            kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(children))

            def pods() -> list[str]:
                items = kube_cluster.json(
                    "get", "pods", "-n", namespace, "-l", f"{names.SERVICE_LABEL}=hibari"
                )["items"]
                return sorted(p["metadata"]["name"] for p in items)

            own, other = wait_for(
                lambda: (found := pods()) and len(found) == 2 and found,
                timeout=60,
                what="the Deployment's two pods",
            )
            agent = as_token(
                kube_cluster,
                pod_token(kube_cluster, namespace, "hibari-agent", own),
                tmp / "agent.kubeconfig",
            )
            unbound = as_token(
                kube_cluster, token(kube_cluster, namespace, "hibari-agent"), tmp / "unbound.kubeconfig"
            )
            yield Fenced(namespace, own, other, agent, unbound, kube_cluster)
    finally:
        kube_cluster.delete_namespace(namespace)


def _annotate(client: Cluster, f: Fenced, pod: str, values: dict[str, str | None]) -> tuple[bool, str]:
    done = client.kubectl(
        "patch",
        "pod",
        pod,
        "-n",
        f.namespace,
        "--type=merge",
        "-p",
        json.dumps({"metadata": {"annotations": values}}),
        check=False,
    )
    return done.returncode == 0, done.stderr


def _refused(done: tuple[bool, str], why: str) -> None:
    ok, stderr = done
    assert not ok, "accepted"
    assert "Forbidden" in stderr and POLICY in stderr and why in stderr, stderr


def _annotations(f: Fenced, pod: str) -> dict[str, str]:
    meta = f.admin.json("get", "pod", pod, "-n", f.namespace)["metadata"]
    found: dict[str, str] = meta.get("annotations") or {}
    return found


def test_agent_sets_its_own_residency_annotation(fenced: Fenced) -> None:
    report = '{"models": [], "updated": "2026-01-01T00:00:00Z"}'
    assert _annotate(fenced.agent, fenced, fenced.own, {ann.RESIDENCY: report}) == (True, "")
    assert _annotations(fenced, fenced.own)[ann.RESIDENCY] == report


def test_agent_removes_an_offload_request_on_its_own_pod(fenced: Fenced) -> None:
    request = '{"id": "r1", "bytes": 1}'
    assert _annotate(fenced.admin, fenced, fenced.own, {ann.OFFLOAD_REQUEST: request})[0]
    _refused(
        _annotate(fenced.agent, fenced, fenced.own, {ann.OFFLOAD_REQUEST: '{"id": "forged"}'}),
        "only set its pod's tts.residency.dev/residency",
    )
    assert _annotate(fenced.agent, fenced, fenced.own, {ann.OFFLOAD_REQUEST: None}) == (True, "")
    assert ann.OFFLOAD_REQUEST not in _annotations(fenced, fenced.own)


def test_agent_is_refused_another_pods_residency(fenced: Fenced) -> None:
    _refused(
        _annotate(fenced.agent, fenced, fenced.other, {ann.RESIDENCY: '{"models": []}'}),
        f"token bound to pod {fenced.own}",
    )
    assert ann.RESIDENCY not in _annotations(fenced, fenced.other)


def test_agent_is_refused_another_pods_annotations(fenced: Fenced) -> None:
    for key in (ann.POLICY, "example.com/anything"):
        _refused(_annotate(fenced.agent, fenced, fenced.other, {key: "forged"}), "only patch the pod")
        assert key not in _annotations(fenced, fenced.other)


def test_agent_is_refused_its_own_labels(fenced: Fenced) -> None:
    done = fenced.agent.kubectl(
        "label",
        "pod",
        fenced.own,
        "-n",
        fenced.namespace,
        f"{names.SERVICE_LABEL}=other",
        "--overwrite",
        check=False,
    )
    _refused((done.returncode == 0, done.stderr), "may not change its pod's spec, labels")
    labels = fenced.admin.json("get", "pod", fenced.own, "-n", fenced.namespace)["metadata"]["labels"]
    assert labels[names.SERVICE_LABEL] == "hibari"


def test_agent_is_refused_its_own_spec(fenced: Fenced) -> None:
    patch = {"spec": {"containers": [{"name": "runtime", "image": "registry.example/evil:1"}]}}
    done = fenced.agent.kubectl(
        "patch",
        "pod",
        fenced.own,
        "-n",
        fenced.namespace,
        "--type=strategic",
        "-p",
        json.dumps(patch),
        "--dry-run=server",
        check=False,
    )
    _refused((done.returncode == 0, done.stderr), "may not change its pod's spec")


def test_agent_is_refused_the_operators_annotations_on_its_own_pod(fenced: Fenced) -> None:
    for key in (ann.POLICY, ann.GPU_SHARE, "example.com/anything"):
        _refused(_annotate(fenced.agent, fenced, fenced.own, {key: "forged"}), "only set its pod's")


def test_a_token_bound_to_no_pod_is_refused_everything(fenced: Fenced) -> None:
    _refused(
        _annotate(fenced.unbound, fenced, fenced.own, {ann.RESIDENCY: '{"models": []}'}),
        "token bound to no pod",
    )


def test_others_with_the_same_role_are_not_fenced(fenced: Fenced, tmp_path: Path) -> None:
    """The policy applies to the operator's agent accounts only, not to every pod writer."""
    ns = fenced.namespace
    fenced.admin.kubectl("create", "serviceaccount", "helper", "-n", ns)
    fenced.admin.kubectl(
        "create", "rolebinding", "helper", "-n", ns, "--role=hibari-agent", f"--serviceaccount={ns}:helper"
    )
    helper = as_token(fenced.admin, token(fenced.admin, ns, "helper"), tmp_path / "helper.kubeconfig")
    assert _annotate(helper, fenced, fenced.other, {"example.com/note": "fine"}) == (True, "")
