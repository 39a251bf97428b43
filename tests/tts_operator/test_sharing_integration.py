"""Real operator frees an idle peer's GPU for a demanding pod: gpu-share and offload-request end to end."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from support.kube import KubeAPI, OperatorProcess, PodVersions

pytestmark = pytest.mark.slow

NODE = "node-a"
GPU_A = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
GPU_B = "GPU-bbbbbbbb-0000-0000-0000-000000000002"
GiB = 2**30
RESIDENCY = "tts.residency.dev/residency"
POLICY = "tts.residency.dev/policy"
GPU_SHARE = "tts.residency.dev/gpu-share"
OFFLOAD_REQUEST = "tts.residency.dev/offload-request"
FAST = {"RESIDENCY_STATUS_SECONDS": "0.5", "RESIDENCY_RECHECK_SECONDS": "2"}

# Each report gets a later `updated`, as an agent's successive publications do (the request id hangs on it).
_ticks = itertools.count(1)
_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def _service(
    name: str, priority: int, pinned: bool = False, budget: int | None = None, replicas: int = 1
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "hibari"},
        "replicas": replicas,
        "residency": {
            "offloadAfterUse": False,
            "idleOffloadSeconds": 600,
            "idleReleaseSeconds": 3600,
            "pinned": pinned,
            "priority": priority,
        },
    }
    if budget is not None:
        spec["gpu"] = {"memoryBudgetBytes": budget}
    return {
        "apiVersion": "tts.residency.dev/v1alpha1",
        "kind": "TTSService",
        "metadata": {"name": name},
        "spec": spec,
    }


def _model(
    state: str, vram: int = 0, *, priority: int, pinned: bool = False, leases: int = 0, demand: int = 0
) -> dict[str, Any]:
    """One model as the runtime reports it, with the policy the agent applied from the service."""
    return {
        "name": "hibari",
        "variant": "base",
        "state": state,
        "vramBytes": vram,
        "hostBytes": vram,
        "leases": leases,
        "gpuDemandBytes": demand,
        "error": None,
        "lastUsed": "2026-01-01T00:00:00Z",
        "policy": {
            "offloadAfterUse": False,
            "idleOffloadSeconds": 600,
            "idleReleaseSeconds": 3600,
            "pinned": pinned,
            "priority": priority,
        },
    }


def _report(model: dict[str, Any], gpu: str | None, free: int = 0) -> str:
    updated = (_EPOCH + timedelta(seconds=next(_ticks))).strftime("%Y-%m-%dT%H:%M:%SZ")
    gpu_report = {"uuid": gpu, "index": 0, "totalBytes": 80 * GiB, "freeBytes": free, "processBytes": 0}
    return json.dumps({"models": [model], "gpu": gpu_report if gpu else None, "updated": updated})


class Sharing:
    """The cluster as the operator sees it: the services' Deployments make the pods, the test runs them (as
    a kubelet would) and writes what their agents would. A pod is named by the test (`hi-0`): `real(alias)`
    is the name its ReplicaSet gave it, `ref(alias)` its `namespace/name` as the operator writes it."""

    def __init__(self, kube: KubeAPI, operator: OperatorProcess) -> None:
        self.kube = kube
        self.operator = operator
        self.ns = kube.namespace
        self._real: dict[str, str] = {}
        self._alias: dict[str, str] = {}
        # Every version of every pod, and the operator's writes, from before the first pod.
        self._versions: PodVersions = kube.pod_versions()
        self._mark = kube.cluster.audit_mark()

    def real(self, alias: str) -> str:
        return self._real[alias]

    def ref(self, alias: str) -> str:
        return f"{self.ns}/{self._real[alias]}"

    def alias(self, ref: str) -> str:
        return self._alias[ref.rsplit("/", 1)[-1]]

    def create_services(self, *services: dict[str, Any]) -> None:
        for service in services:
            self.kube.create("ttsservices", service)
        for service in services:
            name = service["metadata"]["name"]
            self.kube.wait_for(
                lambda n=name: self.kube.get("deployments", None, n), what=f"deployment {name}"
            )

    def start_pod(self, service: str, alias: str, report: str, node: str = NODE) -> None:
        """The next pod of the service's ReplicaSet runs on `node`; its agent publishes `report`."""
        taken = set(self._alias)

        def fresh() -> str | None:
            pods = self.kube.list("pods", None, f"tts.residency.dev/service={service}")
            names = sorted(p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp"))
            return next((n for n in names if n not in taken), None)

        name = self.kube.wait_for(fresh, timeout=60, what=f"a pod of {service} for {alias}")
        self._real[alias], self._alias[name] = name, alias
        self.kube.run_pod(name, node)
        self.publish(alias, report)

    def publish(self, alias: str, report: str) -> None:
        """What the pod's agent does when its runtime's report changes."""
        self.kube.patch("pods", None, self.real(alias), {"metadata": {"annotations": {RESIDENCY: report}}})

    def acknowledge(self, alias: str) -> None:
        """What the agent does once it has served an offload request: remove the annotation."""
        patch = {"metadata": {"annotations": {OFFLOAD_REQUEST: None}}}
        self.kube.patch("pods", None, self.real(alias), patch)

    def notes(self, alias: str) -> dict[str, str]:
        pod = self.kube.get("pods", None, self.real(alias))
        assert pod is not None, alias
        return dict(pod["metadata"].get("annotations") or {})

    def share(self, alias: str) -> dict[str, Any] | None:
        raw = self.notes(alias).get(GPU_SHARE)
        return json.loads(raw) if raw else None

    def peers(self, alias: str) -> dict[str, int] | None:
        """The pod's gpu-share peers as {alias: residentBytes}, or None before the operator wrote it."""
        share = self.share(alias)
        return None if share is None else {self.alias(p["pod"]): p["residentBytes"] for p in share["peers"]}

    def wait_peers(self, alias: str, expected: dict[str, int], what: str) -> None:
        try:
            self.kube.wait_for(lambda: self.peers(alias) == expected, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {alias} peers now {self.peers(alias)}") from None

    def requests(self) -> dict[str, dict[str, Any]]:
        """The offload requests on the pods now, by pod alias."""
        found = {}
        for pod in self.kube.list("pods", None):
            raw = (pod["metadata"].get("annotations") or {}).get(OFFLOAD_REQUEST)
            if raw and pod["metadata"]["name"] in self._alias:
                found[self._alias[pod["metadata"]["name"]]] = json.loads(raw)
        return found

    def settled(self) -> None:
        """The operator is done with every version of every pod: it logged each pod's current version, and a
        run of sharing passes ended after that (a pass plans every pod whose event came before it)."""

        def done() -> bool:
            lines = self.operator.logs().splitlines()
            last_seen = -1
            for name in self._alias:
                pod = self.kube.get("pods", None, name)
                assert pod is not None, name
                mark = f" {self.ns}/{name} at {pod['metadata']['resourceVersion']}"
                seen = [i for i, line in enumerate(lines) if "pod event" in line and line.endswith(mark)]
                if not seen:
                    return False
                last_seen = max(last_seen, seen[-1])
            return any("sharing passes done" in line for line in lines[last_seen + 1 :])

        self.kube.wait_for(done, timeout=30, what="the operator done with every pod's current version")

    def request_ids_ever(self) -> dict[str, set[str]]:
        """Every offload-request id each pod ever carried, from a watch on the pods since before the first."""
        ids: dict[str, set[str]] = {}
        for name in self._alias:
            for version in self._versions.seen(name):
                notes = (version.get("metadata") or {}).get("annotations") or {}
                if notes.get(OFFLOAD_REQUEST):
                    ids.setdefault(self._alias[name], set()).add(json.loads(notes[OFFLOAD_REQUEST])["id"])
        return ids

    def redundant_writes(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(pod, annotation) -> (operator PATCHes writing it, changes of it) wherever they differ: a PATCH
        that changed nothing wrote the value already there. From the audit log (the operator's PATCH bodies)
        and a watch on the pods; the test writes none of these annotations (it only removes requests, as
        agents do). Call it once `settled()`."""
        writes: Counter[tuple[str, str]] = Counter()
        for event in self.kube.writes(self.operator.user, self._mark):
            ref = event["objectRef"]
            if event["verb"] != "patch" or ref["resource"] != "pods" or ref.get("subresource"):
                continue
            if ref.get("namespace") != self.ns or ref.get("name") not in self._alias:
                continue
            body = event.get("requestObject") or {}
            for key, value in ((body.get("metadata") or {}).get("annotations") or {}).items():
                if key in (POLICY, GPU_SHARE) or (key == OFFLOAD_REQUEST and value is not None):
                    writes[(self._alias[ref["name"]], key)] += 1
        changed: Counter[tuple[str, str]] = Counter()
        for name in self._alias:
            seen = self._versions.seen(name)
            for before_pod, after_pod in itertools.pairwise(seen):
                before = (before_pod.get("metadata") or {}).get("annotations") or {}
                after = (after_pod.get("metadata") or {}).get("annotations") or {}
                for key in (POLICY, GPU_SHARE, OFFLOAD_REQUEST):
                    if after.get(key) != before.get(key) and (key != OFFLOAD_REQUEST or after.get(key)):
                        changed[(self._alias[name], key)] += 1
        return {k: (writes[k], changed[k]) for k in writes.keys() | changed.keys() if writes[k] != changed[k]}


@pytest.fixture()
def cluster(kube_api: KubeAPI, run_operator: Callable[..., OperatorProcess]) -> Iterator[Sharing]:
    proc = run_operator(**FAST)
    yield Sharing(kube_api, proc)
    # A failed assertion is easier to read with what the operator did.
    assert "Traceback" not in proc.logs(), proc.logs()[-4000:]


def test_demand_asks_only_the_idle_lower_priority_peer_once(cluster: Sharing) -> None:
    cluster.create_services(
        _service("hi", 5, budget=6 * GiB),
        _service("lo", 0, replicas=3),
        _service("keep", 0, pinned=True),
        _service("top", 9),
    )
    cluster.start_pod("hi", "hi-0", _report(_model("unloaded", priority=5), GPU_A, free=GiB))
    cluster.start_pod("lo", "lo-idle", _report(_model("gpu", 2 * GiB, priority=0), GPU_A))
    cluster.start_pod("lo", "lo-busy", _report(_model("gpu", 3 * GiB, priority=0, leases=1), GPU_A))
    cluster.start_pod("lo", "lo-other-gpu", _report(_model("gpu", 4 * GiB, priority=0), GPU_B))
    cluster.start_pod("keep", "keep-0", _report(_model("gpu", 5 * GiB, priority=0, pinned=True), GPU_A))
    cluster.start_pod("top", "top-0", _report(_model("gpu", 6 * GiB, priority=9), GPU_A))
    held = {"hi-0": 0, "lo-idle": 2 * GiB, "lo-busy": 3 * GiB, "keep-0": 5 * GiB, "top-0": 6 * GiB}

    def peers_of(name: str) -> dict[str, int]:
        """What `name`'s gpu-share should list: every other pod on GPU A with the bytes it holds."""
        return {pod: vram for pod, vram in held.items() if pod != name}

    # Every pod on GPU A learns its peers there and what they hold; the pod on GPU B has none.
    for name in held:
        cluster.wait_peers(name, peers_of(name), f"{name} peers")
    cluster.wait_peers("lo-other-gpu", {}, "lo-other-gpu alone on GPU B")
    share = cluster.share("hi-0")
    assert share is not None
    assert share["group"] == f"{NODE}/{GPU_A}" and share["node"] == NODE and share["gpu"] == GPU_A
    assert share["budgetBytes"] == 6 * GiB
    assert {cluster.alias(p["pod"]): (p["service"], p["priority"]) for p in share["peers"]} == {
        "lo-idle": ("lo", 0),
        "lo-busy": ("lo", 0),
        "keep-0": ("keep", 0),
        "top-0": ("top", 9),
    }
    other = cluster.share("lo-other-gpu")
    assert other is not None and other["group"] == f"{NODE}/{GPU_B}" and other["budgetBytes"] is None
    assert cluster.requests() == {}  # nobody demands anything yet
    assert all(cluster.notes(n).get(POLICY) for n in held)

    # hi-0 needs more than every peer together could free: only the idle, unpinned, lower-priority one on
    # its own GPU may be asked (not the leased one, the pinned one, the higher one, nor the one on GPU B).
    cluster.publish("hi-0", _report(_model("loading", priority=5, demand=40 * GiB), GPU_A, free=GiB))
    requests = cluster.kube.wait_for(cluster.requests, what="an offload request")
    assert set(requests) == {"lo-idle"}
    request = requests["lo-idle"]
    assert request["verb"] == "offload" and request["requestedBy"] == cluster.ref("hi-0")
    assert request["id"] and request["created"] and GPU_A in request["reason"]

    # While the request is pending, new reports from the demander (still demanding) write nothing new.
    for vram in (256 * 2**20, 512 * 2**20):
        held["hi-0"] = vram
        demanding = _model("loading", vram, priority=5, demand=40 * GiB)
        cluster.publish("hi-0", _report(demanding, GPU_A, free=GiB))
        cluster.wait_peers("lo-idle", peers_of("lo-idle"), "lo-idle sees hi-0 loading")
    assert cluster.requests() == {"lo-idle": request}

    # The agent offloads and acknowledges; its next report says cpu. The demander, still short of memory,
    # publishes again: nothing is left to ask, so no new request appears anywhere.
    cluster.acknowledge("lo-idle")
    held["lo-idle"] = 0
    cluster.publish("lo-idle", _report(_model("cpu", priority=0), GPU_A))
    cluster.wait_peers("hi-0", peers_of("hi-0"), "hi-0 sees lo-idle on cpu")
    held["hi-0"] = GiB
    cluster.publish("hi-0", _report(_model("loading", GiB, priority=5, demand=40 * GiB), GPU_A, free=3 * GiB))
    cluster.wait_peers("top-0", peers_of("top-0"), "top-0 sees hi-0's new report")
    assert cluster.requests() == {}
    assert cluster.request_ids_ever() == {"lo-idle": {request["id"]}}

    # lo-idle serves a request of its own and sits idle on GPU again: the demand still stands, so it is
    # asked again, with a new id (the old one named a report that is gone).
    cluster.publish("lo-idle", _report(_model("gpu", 2 * GiB, priority=0), GPU_A))
    again = cluster.kube.wait_for(cluster.requests, what="a second offload request")
    assert set(again) == {"lo-idle"} and again["lo-idle"]["id"] != request["id"]
    cluster.settled()
    assert cluster.redundant_writes() == {}


def test_one_idle_peer_enough_is_the_only_one_asked(cluster: Sharing) -> None:
    """Two idle peers could each free the shortfall: the lowest priority is asked, and the other never is,
    neither while that request is pending nor after it freed the memory while the demand lingers."""
    cluster.create_services(_service("hi", 5), _service("lo", 0), _service("mid", 3))
    cluster.start_pod("hi", "hi-0", _report(_model("unloaded", priority=5), GPU_A, free=GiB // 2))
    cluster.start_pod("lo", "lo-0", _report(_model("gpu", 2 * GiB, priority=0), GPU_A))
    cluster.start_pod("mid", "mid-0", _report(_model("gpu", 2 * GiB, priority=3), GPU_A))
    cluster.wait_peers("hi-0", {"lo-0": 2 * GiB, "mid-0": 2 * GiB}, "hi-0 peers")

    # 1.5 GiB wanted with 0.5 GiB free: 1 GiB short, which lo-0 alone covers.
    cluster.publish("hi-0", _report(_model("loading", priority=5, demand=3 * GiB // 2), GPU_A, free=GiB // 2))
    requests = cluster.kube.wait_for(cluster.requests, what="an offload request")
    assert set(requests) == {"lo-0"}
    # Further passes (every pod event is one) see lo-0's pending request and do not ask mid-0 as well.
    cluster.publish(
        "hi-0", _report(_model("loading", 64 * 2**20, priority=5, demand=3 * GiB // 2), GPU_A, free=GiB // 2)
    )
    cluster.wait_peers("mid-0", {"lo-0": 2 * GiB, "hi-0": 64 * 2**20}, "mid-0 sees hi-0")
    assert set(cluster.requests()) == {"lo-0"}

    # lo-0's agent offloads and acknowledges; its next report is not out yet. The demander's report still
    # shows the old shortfall, yet lo-0 is known to be freeing it: mid-0 is not asked in between.
    cluster.acknowledge("lo-0")
    cluster.settled()  # the operator is done with the acknowledgement, and asked nobody else
    assert cluster.requests() == {}
    # The demander sees the freed memory; its demand still shows (it lingers after a refusal) but free memory
    # covers it. Then lo-0 reports cpu. mid-0 keeps its model throughout.
    cluster.publish(
        "hi-0",
        _report(_model("loading", 128 * 2**20, priority=5, demand=3 * GiB // 2), GPU_A, free=5 * GiB // 2),
    )
    cluster.wait_peers("mid-0", {"lo-0": 2 * GiB, "hi-0": 128 * 2**20}, "mid-0 sees hi-0")
    cluster.publish("lo-0", _report(_model("cpu", priority=0), GPU_A, free=5 * GiB // 2))
    cluster.wait_peers("mid-0", {"lo-0": 0, "hi-0": 128 * 2**20}, "mid-0 sees lo-0 on cpu")
    assert cluster.requests() == {}
    assert set(cluster.request_ids_ever()) == {"lo-0"}
    assert cluster.redundant_writes() == {}
