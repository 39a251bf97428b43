"""A real Kubernetes API server for tests: one control plane per test session, a fresh namespace per test.

Where the cluster comes from, in order:
1. `RESIDENCY_TEST_KUBECONFIG` (or `KUBECONFIG` as the test session started): any real cluster.
2. `../shared/k8s/up.sh` beside the repository (etcd + kube-apiserver + kube-controller-manager on
   loopback, started in a temporary folder and stopped with `down.sh --wipe` at the end of the session).
3. Neither: the tests that need a cluster are skipped with one line saying how to run them, unless
   `RESIDENCY_REQUIRE_K8S=1` (CI), where that is an error.

Fixtures (register with `pytest_plugins = ["support.cluster"]`):
- `kube_cluster` (session): a `Cluster` with `.kubeconfig`, `.env` (a process environment pointing at it),
  `.kubectl(*args)`, `.helm(*args)` (the real binaries, see scripts/k8s-tools.sh), `.apply_crds()`.
- `namespace` (function): a fresh namespace, deleted after the test (deletion is not waited for).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_K8S = ROOT.parent / "shared" / "k8s"
# The cluster the session was started with; tests never set KUBECONFIG in this process.
_GIVEN = os.environ.get("RESIDENCY_TEST_KUBECONFIG") or os.environ.get("KUBECONFIG")
HOW_TO = (
    "needs a Kubernetes API server: set KUBECONFIG (or RESIDENCY_TEST_KUBECONFIG) to a cluster, "
    "or keep ../shared/k8s (up.sh) beside the repository"
)


def tool(name: str) -> str:
    """A real `kubectl` or `helm`: the venv's (scripts/k8s-tools.sh puts them there), else PATH's."""
    venv = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / name
    found = str(venv) if venv.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: run scripts/k8s-tools.sh")
    return found


@dataclass
class Cluster:
    """A running API server: its kubeconfig and the real command-line clients pointed at it."""

    kubeconfig: Path
    workdir: Path | None = None  # set when this session started the control plane itself
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def run(self, name: str, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([tool(name), *args], env=self.env, input=input, capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{name} {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, **kwargs)

    def helm(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, **kwargs)

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply_crds(self) -> None:
        """Install (or update) the project's CRDs and wait until the server serves them."""
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds"))

    def create_namespace(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        return name

    def delete_namespace(self, name: str) -> None:
        self.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def _start_control_plane() -> Cluster:
    workdir = Path(tempfile.mkdtemp(prefix="residency-k8s-"))
    done = subprocess.run(["bash", str(SHARED_K8S / "up.sh"), str(workdir)], capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"../shared/k8s/up.sh failed:\n{done.stdout}\n{done.stderr}")
    return Cluster(workdir / "admin.kubeconfig", workdir=workdir)


def _stop_control_plane(cluster: Cluster) -> None:
    if cluster.workdir is not None:
        subprocess.run(["bash", str(SHARED_K8S / "down.sh"), str(cluster.workdir), "--wipe"],
                       capture_output=True, timeout=120)
        shutil.rmtree(cluster.workdir, ignore_errors=True)


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
        _stop_control_plane(cluster)


@pytest.fixture
def namespace(kube_cluster: Cluster) -> Iterator[str]:
    name = kube_cluster.create_namespace()
    try:
        yield name
    finally:
        kube_cluster.delete_namespace(name)
