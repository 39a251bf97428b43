"""The agent as a real process between a real `tts-runtime serve` and the real Kubernetes API server."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.kube import KubeAPI, OperatorProcess, PodVersions, make_pod
from support.procs import Process, RuntimeProcess, executable, free_port, start_runtime
from tts_contract import annotations as ann
from tts_contract import names

pytestmark = pytest.mark.slow

POD = "voice-0"


class Runtime:
    """One `tts-runtime serve` on a fixed port, restartable (a new process on the same port)."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_file = tmp_path / "admin-token"
        self._tmp = tmp_path
        self.proc: RuntimeProcess | None = None
        self._starts = 0

    def start(self) -> None:
        log = self._tmp / f"runtime-{self._starts}.log"
        self._starts += 1
        self.proc = start_runtime(
            log,
            "--host",
            "127.0.0.1",
            "--admin-token-file",
            str(self.token_file),
            "--log-level",
            "warning",
            port=self.port,
        )

    def kill(self) -> None:
        """A crash: SIGKILL, no drain (the agent must notice and recover on its own)."""
        assert self.proc is not None
        os.killpg(self.proc.popen.pid, signal.SIGKILL)
        self.proc.popen.wait(timeout=10)
        self.proc.stop()

    def admin(self, model: str, verb: str) -> dict[str, Any]:
        token = self.token_file.read_text().strip()
        response = httpx.post(
            f"{self.url}/v1/models/{model}/{verb}", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.url}/v1/residency", timeout=5).json()
        return data


@pytest.fixture()
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime(tmp_path)
    try:
        yield rt
    finally:
        if rt.proc is not None:
            rt.proc.stop()


class Agent:
    def __init__(self, proc: Process, health_port: int) -> None:
        self.proc = proc
        self.health = f"http://127.0.0.1:{health_port}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.health}{path}", timeout=2)

    def status(self, path: str) -> int | None:
        """The probe's HTTP status, None while the agent is not listening yet."""
        try:
            return self.get(path).status_code
        except httpx.HTTPError:
            return None


@pytest.fixture()
def start_agent(kube_api: KubeAPI, runtime: Runtime, tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    started: list[Process] = []

    def start(pod: str = POD) -> Agent:
        port = free_port()
        args = [
            executable("tts-operator"),
            "agent",
            "--pod",
            pod,
            "--namespace",
            kube_api.namespace,
            "--runtime-url",
            runtime.url,
            "--admin-token-file",
            str(runtime.token_file),
            "--health-port",
            str(port),
            "--health-host",
            "127.0.0.1",
            "--min-publish-interval",
            "0.2",
            "--log-level",
            "DEBUG",
        ]
        env = {**os.environ, "KUBECONFIG": str(kube_api.kubeconfig), "PYTHONUNBUFFERED": "1"}
        proc = Process(args, env, tmp_path / f"agent-{len(started)}.log")
        started.append(proc)
        return Agent(proc, port)

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


def residency(kube_api: KubeAPI) -> ann.ResidencyValue | None:
    pod = kube_api.get("pods", None, POD)
    raw = ((pod or {}).get("metadata", {}).get("annotations") or {}).get(ann.RESIDENCY)
    return ann.parse(ann.ResidencyValue, raw)


def model_state(kube_api: KubeAPI) -> str | None:
    value = residency(kube_api)
    return value.models[0].state if value is not None and value.models else None


def state_when_acknowledged(versions: PodVersions) -> str | None:
    """The published model state in the pod version that removed the offload request (a watch sees every
    version of the pod)."""
    had_request = False
    for raw in versions.seen():
        notes = raw.get("metadata", {}).get("annotations") or {}
        if ann.OFFLOAD_REQUEST in notes:
            had_request = True
        elif had_request:
            value = ann.parse(ann.ResidencyValue, notes.get(ann.RESIDENCY))
            return value.models[0].state if value is not None and value.models else None
    return None


def annotate(kube_api: KubeAPI, key: str, value: Any) -> None:
    text = None if value is None else json.dumps(value)
    kube_api.patch("pods", None, POD, {"metadata": {"annotations": {key: text}}})


def test_agent_publishes_residency_applies_policy_and_serves_offload_requests(
    kube_api: KubeAPI, runtime: Runtime, start_agent: Callable[..., Agent]
) -> None:
    kube_api.create("pods", make_pod("voice", POD))
    versions = kube_api.pod_versions(POD)
    runtime.start()
    agent = start_agent()
    wait = kube_api.wait_for
    try:
        wait(lambda: model_state(kube_api) == "unloaded", what="the first residency annotation")
        published = residency(kube_api)
        assert published is not None and published.updated is not None
        assert published.models[0].name == "hibari"

        # A runtime state change reaches the annotation.
        runtime.admin("hibari", "load")
        wait(lambda: model_state(kube_api) == "gpu", what="state gpu published")
        runtime.admin("hibari", "offload")
        wait(lambda: model_state(kube_api) == "cpu", what="state cpu published")

        # A policy edit on the pod reaches the runtime, and the published report shows it back.
        policy = {
            "offloadAfterUse": False,
            "idleOffloadSeconds": 42,
            "idleReleaseSeconds": 0,
            "pinned": False,
            "priority": 3,
        }
        annotate(kube_api, ann.POLICY, policy)
        wait(lambda: runtime.report()["models"][0]["policy"] == policy, timeout=10, what="policy applied")
        wait(
            lambda: (
                (v := residency(kube_api)) is not None
                and v.models[0].policy is not None
                and v.models[0].policy.priority == 3
            ),
            what="policy published",
        )
        wait(lambda: agent.status("/readyz") == 200, what="ready after the policy sync")

        # gpu-share is kept and shown on /healthz.
        share = {"group": "node-a/GPU-1", "node": "node-a", "gpu": "GPU-1", "budgetBytes": None, "peers": []}
        annotate(kube_api, ann.GPU_SHARE, share)
        wait(
            lambda: (agent.get("/healthz").json().get("gpuShare") or {}).get("group") == "node-a/GPU-1",
            what="gpu-share on /healthz",
        )

        # An offload request frees the GPU and is acknowledged by removing the annotation.
        runtime.admin("hibari", "restore")
        wait(lambda: model_state(kube_api) == "gpu", what="restored")
        annotate(
            kube_api, ann.OFFLOAD_REQUEST, {"id": "req-1", "verb": "offload", "requestedBy": "default/peer"}
        )

        def served() -> bool:
            pod = kube_api.get("pods", None, POD) or {}
            return ann.OFFLOAD_REQUEST not in (pod["metadata"].get("annotations") or {})

        wait(served, timeout=10, what="the offload request removed")
        assert runtime.report()["models"][0]["state"] == "cpu"
        # The acknowledgement carries the report after the offload: the operator never sees the request
        # gone while the pod still reports its model on the GPU.
        assert state_when_acknowledged(versions) == "cpu"
        wait(lambda: model_state(kube_api) == "cpu", what="offloaded state published")

        # A malformed request can never be served: it is removed too, with an error in the log.
        kube_api.patch("pods", None, POD, {"metadata": {"annotations": {ann.OFFLOAD_REQUEST: "{nope"}}})
        wait(served, timeout=10, what="the malformed offload request removed")
        assert "is not a valid OffloadRequestValue" in agent.proc.logs()
    except AssertionError:
        print(agent.proc.logs()[-6000:])
        raise
    agent.proc.stop()
    assert agent.proc.popen.returncode == 0
    assert "agent stopped" in agent.proc.logs()


def test_agent_survives_a_missing_pod_and_runtime_restarts(
    kube_api: KubeAPI, runtime: Runtime, start_agent: Callable[..., Agent]
) -> None:
    agent = start_agent()  # neither the pod nor the runtime exists yet
    wait = kube_api.wait_for
    try:
        wait(lambda: agent.status("/healthz") == 200, timeout=20, what="the agent's probes")
        assert agent.status("/readyz") == 503
        policy = {
            "offloadAfterUse": True,
            "idleOffloadSeconds": 600,
            "idleReleaseSeconds": 7,
            "pinned": True,
            "priority": 0,
        }
        kube_api.create("pods", make_pod("voice", POD, annotations={ann.POLICY: json.dumps(policy)}))
        runtime.start()
        wait(lambda: model_state(kube_api) == "unloaded", timeout=30, what="residency after a late start")
        wait(lambda: runtime.report()["models"][0]["policy"] == policy, timeout=15, what="policy applied")
        runtime.admin("hibari", "load")
        wait(lambda: model_state(kube_api) == "gpu", what="gpu published")

        # A crash: the new runtime starts unloaded with its default policy; the agent notices both.
        runtime.kill()
        wait(lambda: agent.status("/readyz") == 503, timeout=15, what="not ready without the runtime")
        runtime.start()
        wait(lambda: model_state(kube_api) == "unloaded", timeout=30, what="the restarted runtime's state")
        wait(lambda: runtime.report()["models"][0]["policy"] == policy, timeout=15, what="policy re-applied")
        wait(lambda: agent.status("/readyz") == 200, timeout=15, what="ready again")

        # The pod is replaced under the same name: the agent publishes again on the new one.
        kube_api.delete("pods", None, POD)
        kube_api.create("pods", make_pod("voice", POD, annotations={ann.POLICY: json.dumps(policy)}))
        wait(lambda: model_state(kube_api) == "unloaded", timeout=30, what="residency on the new pod")
        assert agent.proc.popen.poll() is None
        assert "not found" in agent.proc.logs()
    except AssertionError:
        print(agent.proc.logs()[-6000:])
        raise


def test_operator_status_and_policy_follow_a_real_agent_and_runtime(
    kube_api: KubeAPI,
    runtime: Runtime,
    start_agent: Callable[..., Agent],
    run_operator: Callable[..., OperatorProcess],
) -> None:
    """The whole loop: runtime, agent, pod annotation, operator status; and spec, operator, agent, runtime."""
    run_operator(RESIDENCY_STATUS_SECONDS="0.5", RESIDENCY_RECHECK_SECONDS="2")
    service = {
        "apiVersion": f"{names.GROUP}/{names.VERSION}",
        "kind": "TTSService",
        "metadata": {"name": "voice"},
        "spec": {"model": {"name": "hibari"}, "replicas": 1},
    }
    kube_api.create("ttsservices", service)
    # The Deployment's pod runs here: bound and started as a kubelet would, its runtime and agent local.
    (pod,) = kube_api.run_service_pods("voice", 1)
    runtime.start()
    agent = start_agent(pod["metadata"]["name"])
    wait = kube_api.wait_for

    def counts() -> dict[str, int]:
        obj = kube_api.get("ttsservices", None, "voice") or {}
        return dict((obj.get("status") or {}).get("pods") or {})

    try:
        wait(lambda: counts().get("unloaded") == 1, timeout=30, what="status counts an unloaded pod")
        runtime.admin("hibari", "load")
        wait(lambda: counts().get("gpu") == 1 and counts().get("unloaded") == 0, timeout=30, what="gpu count")
        runtime.admin("hibari", "offload")
        wait(lambda: counts().get("cpu") == 1 and counts().get("gpu") == 0, timeout=30, what="cpu count")

        # A policy edit on the TTSService reaches the pod annotation (operator), then the runtime (agent).
        edit = {"spec": {"residency": {"offloadAfterUse": False, "idleOffloadSeconds": 77, "priority": 4}}}
        kube_api.patch("ttsservices", None, "voice", edit)
        wait(
            lambda: runtime.report()["models"][0]["policy"]["idleOffloadSeconds"] == 77,
            timeout=30,
            what="the edited policy in the runtime",
        )
        policy = runtime.report()["models"][0]["policy"]
        assert policy["offloadAfterUse"] is False and policy["priority"] == 4
    except AssertionError:
        print(agent.proc.logs()[-6000:])
        raise
