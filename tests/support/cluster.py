"""A real Kubernetes API server for tests: one control plane per test session, a fresh namespace per test.

Where the cluster comes from, in order:
1. `RESIDENCY_TEST_KUBECONFIG` (or `KUBECONFIG` as the test session started): any real cluster.
2. `../shared/k8s/up.sh` beside the repository, or in `$RESIDENCY_SHARED_K8S` (etcd + kube-apiserver +
   kube-controller-manager on loopback, with the audit log of `audit-policy.yaml`, started in a temporary
   folder and stopped with `down.sh --wipe` at the end of the session).
3. Neither: the tests that need a cluster are skipped with one line saying how to run them, unless
   `RESIDENCY_REQUIRE_K8S=1` (CI), where that is an error.
To reuse one control plane across sessions (saves ~15 s a run), start it with the audit log as this module
does: `KAS_EXTRA_ARGS="--audit-policy-file=$PWD/tests/support/audit-policy.yaml
--audit-log-path=$W/logs/audit.log" bash ../shared/k8s/up.sh $W`, then
`export RESIDENCY_TEST_KUBECONFIG=$W/admin.kubeconfig`.

Fixtures (registered for the whole suite by tests/conftest.py):
- `kube_cluster` (session): a `Cluster`, the CRDs of crds/ installed.
- `namespace` (function): a fresh namespace name; deleted after the test (deletion is not waited for), with
  the cluster-wide objects the test made for it (identities' ClusterRoleBindings).

`Cluster` API:
- `.kubeconfig`, `.env` (a process environment pointing at it); `.kubectl(*args)`, `.helm(*args)` (the real
  binaries, see scripts/k8s-tools.sh; `check=False` to look at a failure), `.json(*kubectl_args)`.
- `.request(method, path, body=None, content_type=None, query=None)` -> (status, decoded JSON) over the
  official client, as any client would; `.apply_crds()`.
- `.identity(namespace, name)` -> the kubeconfig of ServiceAccount `name` in `namespace` bound to
  cluster-admin, so that a process (the operator, an agent) has its own user; `Cluster.username(ns, name)`.
- `.audit(user=None, since=0)` -> the audit events (dicts) after mark `since` (`.audit_mark()`), of `user`
  only if given; `.audited` says whether the server keeps an audit log this module can read (a test that
  counts writes skips without one). Only writes are audited (create, update, patch, delete).
- `.ensure_node(name)`: a Node that stays Ready as if a kubelet ran on it (its Lease is renewed in the
  background), so that pods bound to it are neither marked NotReady nor garbage-collected.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The control plane's binaries and scripts: ../shared/k8s beside the repository, or where this says.
SHARED_K8S = Path(os.environ.get("RESIDENCY_SHARED_K8S") or ROOT.parent / "shared" / "k8s")
AUDIT_POLICY = Path(__file__).with_name("audit-policy.yaml")
# The cluster the session was started with; tests never set KUBECONFIG in this process.
_GIVEN = os.environ.get("RESIDENCY_TEST_KUBECONFIG") or os.environ.get("KUBECONFIG")
HOW_TO = (
    "needs a Kubernetes API server: set KUBECONFIG (or RESIDENCY_TEST_KUBECONFIG) to a cluster, "
    "or keep ../shared/k8s (up.sh) beside the repository"
)
TEST_LABEL = "residency.dev/test-namespace"  # on cluster-wide objects a test made, for clean-up
NODE_LEASE_SECONDS = 40
HEARTBEAT_S = 10.0


def tool(name: str) -> str:
    """A real `kubectl` or `helm`: the venv's (scripts/k8s-tools.sh puts them there), else PATH's."""
    venv = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / name
    found = str(venv) if venv.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: run scripts/k8s-tools.sh")
    return found


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Cluster:
    """A running API server: its kubeconfig, the real command-line clients and a raw client pointed at it."""

    def __init__(self, kubeconfig: Path, workdir: Path | None = None) -> None:
        from kubernetes import config

        self.kubeconfig = kubeconfig
        self.workdir = workdir  # set when this session started the control plane itself
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        self.client = config.new_client_from_config(config_file=str(kubeconfig))
        self.client.user_agent = "residency-tests"
        self._lock = threading.Lock()
        self._nodes: set[str] = set()
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()

    # --- command-line clients -------------------------------------------------------------------------
    def run(
        self, name: str, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [tool(name), *args], env=self.env, input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{name} {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, **kwargs)

    def helm(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, **kwargs)

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    # --- raw API --------------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str | None = None,
        query: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, Any]:
        """One HTTP request to the API server; (status, decoded JSON body or None). Never raises on 4xx."""
        from kubernetes.client import ApiException

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        params = self.client.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.client.call_api(*params, _request_timeout=timeout)
            response.read()
            status, data = int(response.status), response.data
        except ApiException as exc:
            status, data = int(exc.status or 0), exc.body
        if isinstance(data, str):
            data = data.encode()
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, {"message": bytes(data).decode(errors="replace")}

    def apply_crds(self) -> None:
        """Install (or update) the project's CRDs and wait until the server serves them."""
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds"))

    # --- namespaces and identities --------------------------------------------------------------------
    def create_namespace(self, prefix: str = "t", name: str | None = None) -> str:
        """A new namespace, once pods can be made in it: the controller-manager has given it its `default`
        ServiceAccount (until then the API server refuses pods there, 403)."""
        name = name or f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        deadline = time.monotonic() + 60
        while self.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] != 200:
            if time.monotonic() > deadline:
                raise AssertionError(f"namespace {name} got no default ServiceAccount in 60 s")
            time.sleep(0.1)
        return name

    def delete_namespace(self, name: str) -> None:
        """Delete a test's namespace so that it goes: the operator that would have removed its finalizers
        from the TTSServices is stopped, and the pods bound to the test's nodes have no kubelet to finish
        their graceful deletion (both are done here instead)."""
        self.kubectl(
            "delete", "clusterrolebindings", "-l", f"{TEST_LABEL}={name}", "--ignore-not-found", check=False
        )
        ttsservices = f"/apis/tts.residency.dev/v1alpha1/namespaces/{name}/ttsservices"
        status, listed = self.request("GET", ttsservices)
        for item in (listed or {}).get("items", []) if status == 200 else []:
            if item["metadata"].get("finalizers"):
                self.request(
                    "PATCH",
                    f"{ttsservices}/{item['metadata']['name']}",
                    {"metadata": {"finalizers": None}},
                    "application/merge-patch+json",
                )
        self.kubectl(
            "delete", "pods", "--all", "-n", name, "--grace-period=0", "--force", "--wait=false", check=False
        )
        self.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)

    @staticmethod
    def username(namespace: str, name: str) -> str:
        return f"system:serviceaccount:{namespace}:{name}"

    def identity(self, namespace: str, name: str, directory: Path | None = None) -> Path:
        """A kubeconfig for ServiceAccount `name` (made in `namespace`, bound to cluster-admin): a process run
        with it is told apart from the test itself in the audit log."""
        self.kubectl("create", "serviceaccount", name, "-n", namespace)
        binding = f"{namespace}-{name}"
        self.kubectl(
            "create",
            "clusterrolebinding",
            binding,
            "--clusterrole=cluster-admin",
            f"--serviceaccount={namespace}:{name}",
        )
        self.kubectl("label", "clusterrolebinding", binding, f"{TEST_LABEL}={namespace}")
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration=2h").stdout.strip()
        config = yaml.safe_load(self.kubeconfig.read_text())
        context = next(c for c in config["contexts"] if c["name"] == config["current-context"])["context"]
        cluster = next(c for c in config["clusters"] if c["name"] == context["cluster"])
        path = (directory or Path(tempfile.mkdtemp(prefix="residency-id-"))) / f"{name}.kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": name,
                    "clusters": [{"name": "cluster", "cluster": cluster["cluster"]}],
                    "users": [{"name": name, "user": {"token": token}}],
                    "contexts": [
                        {
                            "name": name,
                            "context": {"cluster": "cluster", "user": name, "namespace": namespace},
                        }
                    ],
                }
            )
        )
        return path

    # --- audit log --------------------------------------------------------------------------------------
    @property
    def audit_log(self) -> Path:
        return self.kubeconfig.parent / "logs" / "audit.log"

    @property
    def audited(self) -> bool:
        return self.audit_log.exists()

    def audit_mark(self) -> int:
        return self.audit_log.stat().st_size if self.audited else 0

    def audit(self, user: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        """Audit events (written before the server answers) from byte offset `since`, of `user` if given."""
        with self.audit_log.open("rb") as log:
            log.seek(since)
            events = [json.loads(line) for line in log.read().splitlines() if line.strip()]
        return [e for e in events if user is None or e["user"]["username"] == user]

    # --- nodes ------------------------------------------------------------------------------------------
    def ensure_node(self, name: str) -> None:
        """A Ready Node kept alive as a kubelet would (its Lease renewed every 10 s) for the session."""
        with self._lock:
            if name in self._nodes:
                return
            self._nodes.add(name)
        status, _ = self.request(
            "POST",
            "/api/v1/nodes",
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {TEST_LABEL: "node"}}},
        )
        if status not in (201, 409):
            raise AssertionError(f"creating node {name}: {status}")
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "test kubelet",
            "lastHeartbeatTime": _now(),
            "lastTransitionTime": _now(),
        }
        conditions = {"status": {"conditions": [ready]}}
        status, body = self.request(
            "PATCH", f"/api/v1/nodes/{name}/status", conditions, "application/merge-patch+json"
        )
        if status != 200:
            raise AssertionError(f"node {name} status: {status} {body}")
        self._renew(name)
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(target=self._beat, name="test-kubelet", daemon=True)
            self._heartbeat.start()

    def _renew(self, node: str) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"
        spec = {"holderIdentity": node, "leaseDurationSeconds": NODE_LEASE_SECONDS, "renewTime": _now()}
        status, _ = self.request("PATCH", path, {"spec": spec}, "application/merge-patch+json")
        if status == 404:
            self.request(
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": node, "namespace": "kube-node-lease"},
                    "spec": spec,
                },
            )

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with self._lock:
                nodes = sorted(self._nodes)
            for node in nodes:
                # A missed beat is retried in 10 s, like a kubelet's.
                with contextlib.suppress(Exception):
                    self._renew(node)

    def close(self) -> None:
        self._stop.set()
        if self.workdir is None:  # someone else's cluster: leave no node behind
            for node in sorted(self._nodes):
                self.request("DELETE", f"/api/v1/nodes/{node}")
        self.client.close()


def _start_control_plane() -> Cluster:
    workdir = Path(tempfile.mkdtemp(prefix="residency-k8s-"))
    audit = f"--audit-policy-file={AUDIT_POLICY} --audit-log-path={workdir}/logs/audit.log"
    env = {**os.environ, "KAS_EXTRA_ARGS": f"{os.environ.get('KAS_EXTRA_ARGS', '')} {audit}".strip()}
    done = subprocess.run(
        ["bash", str(SHARED_K8S / "up.sh"), str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"../shared/k8s/up.sh failed:\n{done.stdout}\n{done.stderr}")
    return Cluster(workdir / "admin.kubeconfig", workdir=workdir)


def _stop_control_plane(cluster: Cluster) -> None:
    if cluster.workdir is not None:
        subprocess.run(
            ["bash", str(SHARED_K8S / "down.sh"), str(cluster.workdir), "--wipe"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(cluster.workdir, ignore_errors=True)


def cluster_available() -> bool:
    """Whether a session here can get a cluster (given, or the shared binaries beside the repository)."""
    return bool(_GIVEN) or (SHARED_K8S / "up.sh").exists()


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[Cluster]:
    if _GIVEN:
        cluster = Cluster(Path(_GIVEN))
    elif (SHARED_K8S / "up.sh").exists():
        cluster = _start_control_plane()
    elif os.environ.get("RESIDENCY_REQUIRE_K8S") == "1":
        pytest.fail(HOW_TO)
    else:
        pytest.skip(HOW_TO)
    try:
        cluster.apply_crds()
        yield cluster
    finally:
        cluster.close()
        _stop_control_plane(cluster)


@pytest.fixture
def namespace(kube_cluster: Cluster) -> Iterator[str]:
    name = kube_cluster.create_namespace()
    try:
        yield name
    finally:
        kube_cluster.delete_namespace(name)
