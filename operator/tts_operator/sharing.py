"""Pure GPU-sharing plan: pods that share a GPU learn about each other, idle peers are asked to offload."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from tts_contract import Policy, Verb
from tts_contract import annotations as ann
from tts_operator.allocations import ClaimAllocation, Device
from tts_operator.status import PodInfo

# pod key ("ns/name") -> annotation key -> new raw value (None removes it)
Changes = dict[str, dict[str, str | None]]


@dataclass(frozen=True)
class Placement:
    """The node and GPU a pod is on, and who said so: the scheduler (HAMi's annotation, a DRA claim's
    allocation) as soon as it decides, else the runtime's report once it has loaded something."""

    node: str
    gpu: str
    source: Literal["hami", "dra", "report"]
    memory_bytes: int | None = None  # the share the scheduler allocated (HAMi), when it says

    @property
    def group(self) -> str:
        return f"{self.node}/{self.gpu}"


def placement(pod: PodInfo) -> Placement | None:
    """Where the pod's (first) GPU is, or None: terminating, not scheduled, or not on a GPU."""
    if pod.terminating:
        return None
    if pod.hami and (pod.node or pod.hami_node):
        first = pod.hami[0]
        return Placement(pod.node or pod.hami_node or "", first.id, "hami", first.memory_bytes)
    if pod.claim_devices and (pod.node or pod.claim_node):
        first = pod.claim_devices[0]
        return Placement(pod.node or pod.claim_node or "", first.id, "dra", first.memory_bytes)
    if pod.residency is not None and pod.residency.gpu is not None and pod.node:
        return Placement(pod.node, pod.residency.gpu.uuid, "report")
    return None


def gpu_group(pod: PodInfo) -> str | None:
    """The GPU a pod shares ("node/gpu"), or None."""
    where = placement(pod)
    return where.group if where is not None else None


ClaimLookup = Callable[[str, str], ClaimAllocation | None]  # (namespace, claim name) -> its allocation


def with_claims(pod: PodInfo, lookup: ClaimLookup) -> PodInfo:
    """The pod with its DRA claims' allocated devices and node filled in (from the operator's claim index)."""
    if not pod.claims:
        return pod
    devices: list[Device] = []
    node: str | None = None
    for name in pod.claims:
        found = lookup(pod.namespace, name)
        if found is not None:
            devices.extend(found.devices)
            node = node or found.node
    return replace(pod, claim_devices=tuple(devices), claim_node=node)


def _priority(pod: PodInfo) -> int:
    models = pod.residency.models if pod.residency is not None else []
    if models:
        return max(m.policy.priority for m in models)
    policy = ann.parse(Policy, pod.policy)
    return policy.priority if policy is not None else 0


def _idle_bytes(pod: PodInfo, max_priority: int) -> int:
    """GPU bytes this pod could free now: idle and freeable models at or below `max_priority`."""
    if pod.residency is None:
        return 0
    return sum(
        m.vram_bytes
        for m in pod.residency.models
        if m.freeable(Verb.OFFLOAD) and m.policy.priority <= max_priority
    )


def request_id(peer: PodInfo) -> str:
    """One id per peer report: a peer is asked once to free what a report shows, whoever asks and however
    often the demander republishes; it is asked again only after it reports anew (e.g. back on GPU). An id
    tied to the demander's report would re-ask a peer that has acknowledged but not yet published `cpu`."""
    report = ann.dump(peer.residency) if peer.residency is not None else ""
    return hashlib.sha256(f"{peer.key}|{report}".encode()).hexdigest()[:16]


@dataclass
class Touched:
    """What the pod events since the last sharing pass touched: GPU groups, and pods in none.

    Groups do not interact, so a pass that plans only these sees all that can have changed. A pod's group
    before the event counts too (it moved, stopped reporting a GPU or went), so its old peers drop it."""

    groups: set[str] = field(default_factory=set)
    pods: set[str] = field(default_factory=set)
    # pod key -> the group its last event showed; the index only holds the new one.
    _last: dict[str, str | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.groups or self.pods)

    def pod_event(self, pod: PodInfo, gone: bool = False) -> None:
        group = None if gone else gpu_group(pod)
        old = self._last.pop(pod.key, None)
        if not gone:
            self._last[pod.key] = group
        self.groups.update(g for g in (old, group) if g is not None)
        # A pod outside every group may hold a stale `gpu-share` to remove; its key also scopes the
        # pruning of the request ids issued to it.
        self.pods.add(pod.key)

    def take(self) -> Touched:
        """Hand the touched set to a pass and start a new one (the group memory stays)."""
        taken = Touched(self.groups, self.pods)
        self.groups, self.pods = set(), set()
        return taken

    def select(self, pods: Iterable[PodInfo]) -> list[PodInfo]:
        """The pods a pass plans: every member of a touched group (a pod's peers come with it) and the
        touched pods."""
        return [p for p in pods if p.key in self.pods or gpu_group(p) in self.groups]


def plan_gpu_sharing(
    pods: list[PodInfo],
    budgets: Mapping[str, int | None],
    now: datetime,
    issued: frozenset[str] = frozenset(),
) -> Changes:
    """Annotation changes that bring every pod's `gpu-share` and `offload-request` to what the pods' reports
    call for. A pod's peers are the pods given with it: give whole groups (`Touched.select`). `budgets`
    maps "ns/service" to its memory budget; `issued` holds request ids already sent (so an
    acknowledged request is not sent again for the same demand report). Deterministic."""
    changes: Changes = {}
    groups: dict[str, list[PodInfo]] = defaultdict(list)
    where: dict[str, Placement] = {}
    for pod in sorted(pods, key=lambda p: p.key):
        found = placement(pod)
        if found is not None:
            groups[found.group].append(pod)
            where[pod.key] = found
        elif pod.gpu_share is not None and not pod.terminating:
            changes.setdefault(pod.key, {})[ann.GPU_SHARE] = None

    for group, members in groups.items():
        for pod in members:
            at = where[pod.key]
            # A peer the scheduler placed here counts before it reports (it holds nothing yet).
            peers = [
                ann.Peer.model_validate(
                    {
                        "pod": p.key,
                        "service": p.service,
                        "priority": _priority(p),
                        "residentBytes": p.residency.vram_bytes if p.residency is not None else 0,
                    }
                )
                for p in members
                if p is not pod
            ]
            budget = budgets.get(f"{pod.namespace}/{pod.service}")
            if at.memory_bytes is not None:  # what HAMi enforces may be less than what the spec asks
                budget = at.memory_bytes if budget is None else min(budget, at.memory_bytes)
            share = ann.GpuShareValue.model_validate(
                {
                    "group": group,
                    "node": at.node,
                    "gpu": at.gpu,
                    "source": at.source,
                    "budgetBytes": budget,
                    "peers": peers,
                }
            )
            raw = ann.dump(share)
            if raw != pod.gpu_share:
                changes.setdefault(pod.key, {})[ann.GPU_SHARE] = raw

        asked: set[str] = {p.key for p in members if p.offload_request}
        for demander in members:
            if demander.residency is None:
                continue
            wanted = [m for m in demander.residency.models if m.gpu_demand_bytes > 0]
            if not wanted:
                continue
            # The runtime reports all the model needs; what is already free on the GPU need not be freed.
            free = demander.residency.gpu.free_bytes if demander.residency.gpu is not None else 0
            need = sum(m.gpu_demand_bytes for m in wanted) - free
            ceiling = max(m.policy.priority for m in wanted)
            # Requests still pending (from an earlier pass or another demander) are already freeing memory:
            # counting them keeps every later pass from asking one more peer for the same shortfall.
            freed = sum(_idle_bytes(p, ceiling) for p in members if p is not demander and p.key in asked)
            candidates = sorted(
                (p for p in members if p is not demander and p.key not in asked),
                key=lambda p: (_priority(p), -_idle_bytes(p, ceiling), p.key),
            )
            for peer in candidates:
                if freed >= need:
                    break
                idle = _idle_bytes(peer, ceiling)
                rid = request_id(peer)
                if idle == 0 or rid in issued:
                    continue
                value = ann.OffloadRequestValue.model_validate(
                    {
                        "id": rid,
                        "verb": "offload",
                        "requestedBy": demander.key,
                        "created": now,
                        "reason": f"{demander.key} needs {need} more GPU bytes on {group}",
                    }
                )
                changes.setdefault(peer.key, {})[ann.OFFLOAD_REQUEST] = ann.dump(value)
                asked.add(peer.key)
                freed += idle
    return changes


def preferred_nodes(pods: Iterable[PodInfo], priority: int, limit: int = 10) -> list[tuple[str, int]]:
    """Nodes by the GPU memory their idle, unpinned models at or below `priority` could free, most first (at
    most `limit`; nodes with nothing to free are left out). Only pods the operator sees are counted."""
    per_node: dict[str, int] = defaultdict(int)
    for pod in pods:
        at = placement(pod)
        if at is not None:
            per_node[at.node] += _idle_bytes(pod, priority)
    ranked = sorted(((n, b) for n, b in per_node.items() if b > 0), key=lambda nb: (-nb[1], nb[0]))
    return ranked[:limit]


def node_affinity(ranked: list[tuple[str, int]]) -> dict[str, object]:
    """A preferred node affinity for `preferred_nodes`: weights 1..100 in proportion to the bytes."""
    if not ranked:
        return {}
    top = ranked[0][1]
    terms = [
        {
            "weight": max(1, round(100 * freeable / top)),
            "preference": {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]},
        }
        for node, freeable in ranked
    ]
    return {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": terms}}
