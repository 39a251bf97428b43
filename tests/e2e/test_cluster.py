"""End to end on a real cluster: operator, agent and runtime around one TTSService.

The cluster is the session's (support/cluster.py): in CI the control plane of ../shared/k8s, by hand any
cluster in KUBECONFIG (`pytest -m k8s tests/e2e`). Works on a full cluster and on a bare control plane alike:
when no pod of the service runs (no kubelet, no GPU), the test runs `tts-runtime serve` and
`tts-operator agent --pod` as local processes for one pod, creating that pod itself (unscheduled, it stays
Pending) if the Deployment never made one (at once when the cluster has no node). Everything it creates lives
in a fresh namespace that it deletes at the end.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from support.cluster import TEST_LABEL
from support.cluster import Cluster as KubeCluster
from support.procs import Process, executable, free_port, start_runtime, wait_for
from tts_contract import Policy, names
from tts_contract import annotations as ann

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = names.GROUP, names.VERSION, names.PLURAL


class Cluster:
    """The real API server through the official client, plus what the test created (for clean-up)."""

    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import client, config

        self.kubeconfig = kubeconfig
        self.api_client = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)
        self.crds = client.ApiextensionsV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.namespace = f"residency-e2e-{uuid.uuid4().hex[:6]}"
        self.created_crds: list[str] = []

    def ensure_crds(self) -> None:
        from kubernetes.client.exceptions import ApiException

        for path in sorted((ROOT / "crds").glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                name = doc["metadata"]["name"]
                try:
                    self.crds.read_custom_resource_definition(name)
                    continue
                except ApiException as err:
                    if err.status != 404:
                        raise
                self.crds.create_custom_resource_definition(doc)
                self.created_crds.append(name)
                wait_for(lambda n=name: self._established(n), timeout=60, what=f"CRD {name} established")

    def _established(self, name: str) -> bool:
        crd = self.crds.read_custom_resource_definition(name, _preload_content=False)
        conditions = json.loads(crd.data).get("status", {}).get("conditions") or []
        return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)

    def tts(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return obj

    def pods(self, service: str) -> list[dict[str, Any]]:
        response = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{names.SERVICE_LABEL}={service}", _preload_content=False
        )
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        return items

    def can_run_pods(self) -> bool:
        """False on a bare API server: without a node (no kubelet) no pod ever runs. The Nodes other tests
        of this session made (support/cluster.py, kept Ready by the test session itself) run nothing."""
        from kubernetes.client.exceptions import ApiException

        try:
            return bool(self.core.list_node(label_selector=f"!{TEST_LABEL}", limit=1).items)
        except ApiException as err:
            if err.status in (401, 403):  # not allowed to look: assume a full cluster and wait for pods
                return True
            raise

    def pod_annotations(self, name: str) -> dict[str, str]:
        pod = json.loads(self.core.read_namespaced_pod(name, self.namespace, _preload_content=False).data)
        notes: dict[str, str] = pod["metadata"].get("annotations") or {}
        return notes


@pytest.fixture()
def cluster(kube_cluster: KubeCluster) -> Iterator[Cluster]:
    c = Cluster(kube_cluster.kubeconfig)
    c.core.create_namespace({"metadata": {"name": c.namespace, "labels": {"residency-e2e": "true"}}})
    try:
        yield c
    finally:
        c.core.delete_namespace(
            c.namespace
        )  # deletes the rest (asynchronously; a bare server never finishes)
        for name in c.created_crds:
            c.crds.delete_custom_resource_definition(name)
        c.api_client.close()


def _start(cluster: Cluster, args: list[str], log: Path, **env: str) -> Process:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PYTHONUNBUFFERED": "1", **env}
    return Process(args, env, log)


def _models_env(cluster: Cluster, name: str) -> dict[str, str]:
    """The models the operator gave the pod's `runtime` container, for a local stand-in of it."""
    deployment = cluster.apps.read_namespaced_deployment(name, cluster.namespace)
    return {
        env.name: env.value
        for container in deployment.spec.template.spec.containers
        if container.name == "runtime"
        for env in container.env or []
        if env.name == "TTS_RUNTIME_MODELS_JSON" and env.value
    }


def _stand_in_pod(cluster: Cluster, service: str) -> str:
    """A pod as the Deployment would make it, for a server without controllers: it stays Pending."""
    deployment = cluster.apps.read_namespaced_deployment(service, cluster.namespace, _preload_content=False)
    template = json.loads(deployment.data)["spec"]["template"]
    name = f"{service}-e2e-0"
    cluster.core.create_namespaced_pod(
        cluster.namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": template["metadata"]["labels"]},
            "spec": template["spec"],
        },
    )
    return name


def _create_when_served(cluster: Cluster, body: dict[str, Any]) -> None:
    """Create a custom object; just after its CRD turns Established the API server may still answer 404."""
    from kubernetes.client.exceptions import ApiException

    def attempt() -> bool:
        try:
            cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, body)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    wait_for(attempt, timeout=30, interval=0.5, what="the TTSService resource served")


def test_operator_agent_and_runtime_on_a_real_cluster(cluster: Cluster, tmp_path: Path) -> None:
    from kubernetes.client.exceptions import ApiException

    cluster.ensure_crds()
    example = yaml.safe_load((ROOT / "examples" / "ttsservice.yaml").read_text())
    name = example["metadata"]["name"]
    example["metadata"]["namespace"] = cluster.namespace
    _create_when_served(cluster, example)
    procs: list[Process] = []
    operator = _start(
        cluster,
        [executable("tts-operator"), "run", "--standalone", "--namespace", cluster.namespace],
        tmp_path / "operator.log",
    )
    procs.append(operator)
    try:
        # Children appear; a pod of the service runs, or we run its containers here.
        wait_for(
            lambda: (
                cluster.apps.list_namespaced_deployment(
                    cluster.namespace, label_selector=f"{names.SERVICE_LABEL}={name}"
                ).items
            ),
            timeout=60,
            what="the Deployment",
        )
        service_uid = cluster.core.read_namespaced_service(name, cluster.namespace).metadata.uid
        # Without a node nothing runs: a long wait for a running pod would only delay the local stand-ins.
        runs_pods = cluster.can_run_pods()
        try:
            wait_for(lambda: cluster.pods(name), timeout=30 if runs_pods else 5, what="a pod of the service")
        except AssertionError:
            _stand_in_pod(cluster, name)
        try:
            if not runs_pods:
                raise AssertionError("no node can run the pod")
            pod = wait_for(
                lambda: next(
                    (p for p in cluster.pods(name) if p.get("status", {}).get("phase") == "Running"), None
                ),
                timeout=90,
                what="a running pod",
            )
            pod_name, runtime_url = pod["metadata"]["name"], None
        except AssertionError:
            pod_name = cluster.pods(name)[0]["metadata"]["name"]
            token = tmp_path / "admin-token"
            runtime = start_runtime(
                tmp_path / "runtime.log",
                "--host",
                "127.0.0.1",
                "--admin-token-file",
                str(token),
                env=_models_env(cluster, name),  # what the pod's runtime container would serve
            )
            procs.append(runtime)
            runtime_url = runtime.url
            procs.append(
                _start(
                    cluster,
                    [
                        executable("tts-operator"),
                        "agent",
                        "--pod",
                        pod_name,
                        "--namespace",
                        cluster.namespace,
                        "--runtime-url",
                        runtime_url,
                        "--admin-token-file",
                        str(token),
                        "--health-port",
                        str(free_port()),
                    ],
                    tmp_path / "agent.log",
                )
            )

        def residency() -> ann.ResidencyValue | None:
            return ann.parse(ann.ResidencyValue, cluster.pod_annotations(pod_name).get(ann.RESIDENCY))

        def counts() -> dict[str, int]:
            return dict(cluster.tts(name).get("status", {}).get("pods") or {})

        # Status counts follow what the agent publishes.
        first = wait_for(residency, timeout=90, what="the residency annotation")
        wait_for(lambda: counts().get(first.pod_state(), 0) >= 1, timeout=60, what="status counts")
        if runtime_url is not None:
            token_text = (tmp_path / "admin-token").read_text().strip()
            model = first.models[0].name
            loaded = httpx.post(
                f"{runtime_url}/v1/models/{model}/load",
                timeout=120,
                headers={"Authorization": f"Bearer {token_text}"},
            )
            assert loaded.status_code == 200, loaded.text
            wait_for(lambda: counts().get("gpu", 0) >= 1, timeout=60, what="status counts a gpu pod")

        # A policy edit reaches the pod annotation and the runtime; no pod restarts.
        patch = {"spec": {"residency": {"offloadAfterUse": False, "idleOffloadSeconds": 321}}}
        cluster.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            cluster.namespace,
            PLURAL,
            name,
            patch,
            _content_type="application/merge-patch+json",
        )
        wait_for(
            lambda: (
                (
                    ann.parse(Policy, cluster.pod_annotations(pod_name).get(ann.POLICY)) or Policy()
                ).idle_offload_seconds
                == 321
            ),
            timeout=60,
            what="policy annotation",
        )
        wait_for(
            lambda: (
                (r := residency()) is not None
                and all(
                    m.policy is not None
                    and m.policy.idle_offload_seconds == 321
                    and not m.policy.offload_after_use
                    for m in r.models
                )
            ),
            timeout=60,
            what="policy applied by the runtime and published",
        )
        if runtime_url is not None:
            report = httpx.get(f"{runtime_url}/v1/residency", timeout=10).json()
            assert all(m["policy"]["idleOffloadSeconds"] == 321 for m in report["models"])

        # A deleted child comes back.
        cluster.core.delete_namespaced_service(name, cluster.namespace)
        wait_for(
            lambda: _uid_of_service(cluster, name) not in (None, service_uid),
            timeout=60,
            what="the Service recreated",
        )

        # A bad spec is refused by the API server itself (the CRD schema), saying which field.
        bad = {
            **example,
            "metadata": {"name": f"{name}-bad", "namespace": cluster.namespace},
            "spec": {**example.get("spec", {}), "replicas": "many"},
        }
        with pytest.raises(ApiException) as refused:
            cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, bad)
        assert refused.value.status == 422 and "replicas" in str(refused.value.body)

        # Delete while the operator runs, so its finalizer (if any) is removed.
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, name)
        wait_for(lambda: not _exists(cluster, name), timeout=60, what="the TTSService deleted")
    except AssertionError:
        for proc in procs:
            print(f"--- {proc.log.name}\n{proc.logs()[-4000:]}")
        raise
    finally:
        for proc in reversed(procs):
            proc.stop()


def _uid_of_service(cluster: Cluster, name: str) -> str | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return str(cluster.core.read_namespaced_service(name, cluster.namespace).metadata.uid)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def _exists(cluster: Cluster, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        cluster.tts(name)
        return True
    except ApiException as err:
        if err.status == 404:
            return False
        raise
