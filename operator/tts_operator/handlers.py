"""Kopf handlers: thin glue from watch events and timers to the pure builders, plans and status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from tts_contract import annotations as ann
from tts_contract import names
from tts_operator import settings as settings_module
from tts_operator.allocations import NO_DRA, ClaimAllocation, claim_allocation, dra_enabled
from tts_operator.api import Api
from tts_operator.builders import (
    Images,
    Manifest,
    Owner,
    build_deployment,
    build_resource_claim_template,
    build_role,
    build_role_binding,
    build_service,
    build_service_account,
    wants_claim_template,
)
from tts_operator.childwrites import ChildWrites
from tts_operator.debounce import DebouncedRuns
from tts_operator.kube import PATHS, KubeApiError, kopf_errors
from tts_operator.reconcile import (
    ForeignChildError,
    StaleChildError,
    apply_child,
    apply_children,
    needs_patch,
    observed_part,
    patch_annotations,
    sync_policy,
)
from tts_operator.serial import Serial
from tts_operator.sharing import (
    Touched,
    node_affinity,
    plan_gpu_sharing,
    preferred_nodes,
    request_id,
    with_claims,
)
from tts_operator.spec import InvalidSpecError, TTSServiceSpec, parse_spec
from tts_operator.status import PodInfo
from tts_operator.statuswriter import ServiceKey, StatusWriter
from tts_operator.written import ObservedPod, Written

G, V, P = names.GROUP, names.VERSION, names.PLURAL
MANAGED: dict[str, Any] = {names.MANAGED_BY_LABEL: names.MANAGED_BY, names.SERVICE_LABEL: kopf.PRESENT}
log = logging.getLogger(__name__)
# Read once by `tts-operator run` before it imports this module (the timer's interval is fixed here).
SETTINGS = settings_module.current()
# How soon to look again when a child still belongs to a deleted TTSService of the same name.
STALE_RETRY_SECONDS = 1.0
# Stands in, for the sharing plan only, for an offload request that is served but not yet reported on.
ACKNOWLEDGED = "acknowledged; the peer has not reported since"
PLURAL_KINDS = {plural: kind for kind, (_, plural) in PATHS.items()}
# GPU sharing mode dra: ResourceClaims and claim templates are watched only when `tts-operator run` found the
# API served and allowed (a dra service is refused otherwise).
DRA = dra_enabled()
CHILD_BUILDERS: dict[str, Callable[[Owner, Images], Manifest | None]] = {
    "deployments": lambda o, i: build_deployment(o, i),
    "services": lambda o, i: build_service(o),
    "serviceaccounts": lambda o, i: build_service_account(o),
    "roles": lambda o, i: build_role(o),
    "rolebindings": lambda o, i: build_role_binding(o),
}
if DRA:
    CHILD_BUILDERS["resourceclaimtemplates"] = lambda o, i: (
        build_resource_claim_template(o) if wants_claim_template(o.spec) else None
    )


def _api(memo: kopf.Memo) -> Api:
    return cast(Api, memo["api"])


def _images(memo: kopf.Memo) -> Images:
    return cast(Images, memo["images"])


def _written(memo: kopf.Memo) -> Written:
    return cast(Written, memo["written"])


def _status(memo: kopf.Memo) -> DebouncedRuns[ServiceKey]:
    return cast(DebouncedRuns[ServiceKey], memo["status"])


def _reconciles(memo: kopf.Memo) -> Serial[ServiceKey]:
    return cast(Serial[ServiceKey], memo["reconciles"])


def _child_writes(memo: kopf.Memo) -> ChildWrites:
    return cast(ChildWrites, memo["child_writes"])


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Kopf's bookkeeping goes to annotations under our group, keeping `status` ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=G)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=G, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{G}/finalizer"  # only used if a deletion handler ever appears
    settings.posting.level = logging.WARNING  # events for problems users must act on, not for every pass
    settings.watching.server_timeout = 600
    memo["api"] = Api(SETTINGS.api_threads)
    memo["images"] = Images(
        runtime=SETTINGS.runtime_image,
        agent=SETTINGS.agent_image,
        drain_seconds=SETTINGS.runtime_drain_seconds,
    )
    memo["written"] = Written()
    memo["sharing"] = SharingPasses()
    # Kopf runs one object's create/update/resume handlers one at a time, but its timers (the level check)
    # and the children's events in tasks of their own: every path that reconciles a TTSService's children
    # takes that service's turn, so two never create the same child.
    memo["reconciles"] = Serial[ServiceKey]()
    memo["child_writes"] = ChildWrites()


@kopf.on.startup()
async def start_status(memo: kopf.Memo, **kw: Any) -> None:
    """The status writer reads the indexes kopf gives every handler; they are live views, so it keeps them."""
    services, pods = _service_index(kw), _pod_index(kw)
    writer = StatusWriter(
        _api(memo), lambda key: list(services.get(key, [])), lambda key: list(pods.get(key, []))
    )
    memo["status"] = DebouncedRuns(writer.write, SETTINGS.status_seconds, "writing the status")


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    if "status" in memo:
        await _status(memo).close()
    if "api" in memo:
        _api(memo).close()


@kopf.index("pods", labels=MANAGED)
def pods_by_service(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str], PodInfo]:
    return {(namespace or "", labels[names.SERVICE_LABEL]): ObservedPod.from_pod(body)}


@kopf.index(G, V, P)
def services(
    body: kopf.Body, namespace: str | None, name: str, uid: str, **_: Any
) -> dict[tuple[str, str], Any]:
    meta = body.get("metadata") or {}
    return {
        (namespace or "", name): {
            "uid": uid,
            "spec": dict(body.get("spec") or {}),
            "status": dict(body.get("status") or {}),
            "generation": meta.get("generation"),
            "version": meta.get("resourceVersion"),
            "deleting": bool(meta.get("deletionTimestamp")),
        }
    }


def claim_allocations(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[tuple[str, str], ClaimAllocation]:
    """DRA: every claim's allocated devices and node (a few strings each)."""
    return {(namespace or "", name): claim_allocation(body)}


if DRA:
    kopf.index("resource.k8s.io", "v1", "resourceclaims")(claim_allocations)


PodIndex = kopf.Index[tuple[str, str], PodInfo]
ClaimIndex = kopf.Index[tuple[str, str], ClaimAllocation]
ServiceIndex = kopf.Index[tuple[str, str], Any]
ChildIndex = kopf.Index[tuple[str, str], dict[str, Any]]


def _pod_index(kwargs: dict[str, Any]) -> PodIndex:
    """Kopf passes indexes by the indexing function's name."""
    return cast(PodIndex, kwargs["pods_by_service"])


def _service_index(kwargs: dict[str, Any]) -> ServiceIndex:
    return cast(ServiceIndex, kwargs["services"])


def _resolver(kwargs: dict[str, Any]) -> Callable[[PodInfo], PodInfo]:
    """Fills in a pod's DRA devices from the claim index (what the pod index alone cannot know)."""
    claims = cast(ClaimIndex | None, kwargs.get("claim_allocations"))

    def lookup(namespace: str, name: str) -> ClaimAllocation | None:
        return next(iter(claims.get((namespace, name), [])), None) if claims is not None else None

    return lambda pod: with_claims(pod, lookup)


def _pods(index: kopf.Index[tuple[str, str], PodInfo], namespace: str, name: str) -> list[PodInfo]:
    return list(index.get((namespace, name), []))


def _owner(name: str, namespace: str, uid: str, spec: TTSServiceSpec) -> Owner:
    return Owner(name=name, namespace=namespace, uid=uid, spec=spec)


def _known_children(kw: dict[str, Any], namespace: str, name: str) -> dict[str, list[dict[str, Any]]]:
    """The children of service `name` as the watches show them, by kind (kopf indexes them by service)."""
    return {
        PLURAL_KINDS[plural]: list(cast(ChildIndex, kw[f"children_{plural}"]).get((namespace, name), []))
        for plural in CHILD_BUILDERS
    }


async def _reconcile(
    name: str, namespace: str, uid: str, spec: kopf.Spec, memo: kopf.Memo, kw: dict[str, Any]
) -> None:
    """Children and pods' policy of one TTSService, in the service's turn: whatever path (create, update,
    resume, level check) reconciles it after another sees what the other did, from the indexes as they are
    then and from `ChildWrites` (what the indexes lag behind). `spec` is read once the turn comes: for the
    level check it is kopf's live view of the object, so a check that waited applies the latest spec."""
    _status(memo).mark((namespace, name))  # a spec change is a status change too (generation, replicas)
    async with _reconciles(memo).turn((namespace, name)):
        try:
            parsed = parse_spec(dict(spec), name)
        except InvalidSpecError as exc:
            raise kopf.PermanentError(f"invalid TTSService spec: {exc}") from None
        if parsed.gpu.sharing.mode == "dra" and parsed.gpu.count > 0 and not DRA:
            raise kopf.PermanentError(NO_DRA)
        owner = _owner(name, namespace, uid, parsed)
        known = _known_children(kw, namespace, name)
        try:
            await apply_children(_api(memo), owner, _images(memo), known, _child_writes(memo))
        except StaleChildError as exc:  # deleted and applied again at once: the old children are going
            raise kopf.TemporaryError(str(exc), delay=STALE_RETRY_SECONDS) from None
        except ForeignChildError as exc:
            raise kopf.PermanentError(str(exc)) from None
        await sync_policy(_api(memo), parsed, _pods(_pod_index(kw), namespace, name), _written(memo))


@kopf.on.resume(G, V, P)
@kopf.on.create(G, V, P)
@kopf.on.update(G, V, P)
@kopf_errors
async def reconcile_service(
    name: str, namespace: str | None, uid: str, spec: kopf.Spec, memo: kopf.Memo, **kw: Any
) -> None:
    await _reconcile(name, namespace or "", uid, spec, memo, kw)
    await _resync_sharing(memo, namespace or "", name, kw)


def _spread(memo: kopf.Memo, name: str, namespace: str | None, **_: Any) -> float:
    """Called once per service, when the operator first meets it: its first level check comes at a random
    point of the interval, so services applied (or found at startup) together are not all checked in the same
    second, every interval after. Its status is brought up to date now: a new service shows a status at once,
    and that write is an event for kopf, which after a patch of its own conflicted waits for the next one."""
    _status(memo).mark((namespace or "", name))
    return random.uniform(0.5, 1.5) * SETTINGS.recheck_seconds


@kopf.timer(G, V, P, interval=SETTINGS.recheck_seconds, initial_delay=_spread)
@kopf_errors
async def recheck_service(
    name: str, namespace: str | None, uid: str, spec: kopf.Spec, memo: kopf.Memo, **kw: Any
) -> None:
    """The level check: children compared with what the watches show (no reads), pods' policy, status."""
    # A permanent problem is already reported by the create/update handler and in the status conditions.
    with contextlib.suppress(kopf.PermanentError):
        await _reconcile(name, namespace or "", uid, spec, memo, kw)
    await _resync_sharing(memo, namespace or "", name, kw)


async def _resync_sharing(memo: kopf.Memo, namespace: str, name: str, kw: dict[str, Any]) -> None:
    """Re-plan the groups of a service's pods: its budget may have changed, and a pass whose PATCH failed
    is retried here (pod events re-plan only their own groups)."""
    services, pods_by_service, resolve = _service_index(kw), _pod_index(kw), _resolver(kw)
    touched = cast(SharingPasses, memo["sharing"]).touched
    for pod in _pods(pods_by_service, namespace, name):
        touched.pod_event(resolve(pod))
    await _sync_sharing(_api(memo), memo, services, pods_by_service, resolve)
    await _place_gated(_api(memo), memo, _pods(pods_by_service, namespace, name), kw)


def _owner_ref(body: kopf.Body) -> dict[str, Any] | None:
    """The child's controlling TTSService reference (None: not one of ours, leave it alone)."""
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return next(
        (
            dict(r)
            for r in refs
            if r.get("controller")
            and r.get("kind") == "TTSService"
            and str(r.get("apiVersion", "")).startswith(f"{G}/")
        ),
        None,
    )


async def _owner_alive(api: Api, namespace: str, name: str, uid: str) -> bool:
    """Whether the TTSService `uid` still exists and is not being deleted, asked of the API server: when a
    TTSService goes, the garbage collector deletes its children and their DELETED events can arrive before
    its own, while kopf's index still holds it; re-creating then would make children of a deleted owner
    (and block a TTSService applied again under the same name)."""
    found = await api.get("TTSService", namespace, name)
    meta = (found or {}).get("metadata") or {}
    return meta.get("uid") == uid and not meta.get("deletionTimestamp")


def _child_event(plural: str) -> None:
    group, version = {
        "deployments": ("apps", "v1"),
        "roles": ("rbac.authorization.k8s.io", "v1"),
        "rolebindings": ("rbac.authorization.k8s.io", "v1"),
        "resourceclaimtemplates": ("resource.k8s.io", "v1"),
    }.get(plural, ("", "v1"))

    @kopf.index(group, version, plural, labels=MANAGED, id=f"children_{plural}")
    def index_child(
        body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """The level check compares children with these instead of reading them from the API server."""
        return {(namespace or "", labels[names.SERVICE_LABEL]): observed_part(body)}

    @kopf.on.event(group, version, plural, labels=MANAGED, id=f"child-{plural}")
    async def child_changed(
        type: str,
        body: kopf.Body,
        namespace: str | None,
        labels: kopf.Labels,
        memo: kopf.Memo,
        logger: kopf.Logger,
        **kw: Any,
    ) -> None:
        """A child deleted or edited by hand is put back at once (the timer would, later).

        ADDED and the initial listing (type None) are left alone: the create and resume handlers made or
        checked those children, and acting on them too would race them (a second POST, answered 409).
        Each event ends with one DEBUG line `child event TYPE PLURAL NS/NAME: OUTCOME` (what tests wait for
        to know that the operator is done with an event)."""
        meta = body.get("metadata") or {}
        outcome = await _child_outcome(plural, type, body, namespace, labels, memo, kw)
        logger.debug(f"child event {type} {plural} {namespace}/{meta.get('name')}: {outcome}")


async def _child_outcome(
    plural: str,
    type: str,
    body: kopf.Body,
    namespace: str | None,
    labels: kopf.Labels,
    memo: kopf.Memo,
    kw: dict[str, Any],
) -> str:
    """What `child_changed` did about one event of a child, in words."""
    meta = body.get("metadata") or {}
    if type == "DELETED":  # what the operator last wrote of it is gone with it
        kind, ns_ = PLURAL_KINDS[plural], namespace or ""
        _child_writes(memo).forget(kind, ns_, str(meta.get("name") or ""), meta.get("uid"))
    if type not in ("DELETED", "MODIFIED"):
        return "left alone"
    ref = _owner_ref(body)
    if ref is None or (type == "MODIFIED" and meta.get("deletionTimestamp")):
        return "not ours or going"
    service, ns = labels[names.SERVICE_LABEL], namespace or ""
    # In the service's turn: its create handler or level check may be making this very child.
    async with _reconciles(memo).turn((ns, service)):
        return await _put_back(plural, type, body, ref, service, ns, memo, kw)


async def _put_back(
    plural: str,
    type: str,
    body: kopf.Body,
    ref: dict[str, Any],
    service: str,
    ns: str,
    memo: kopf.Memo,
    kw: dict[str, Any],
) -> str:
    """A deleted or edited child of a live TTSService made again as it should be (or why not)."""
    meta = body.get("metadata") or {}
    entries = [e for e in _service_index(kw).get((ns, service), []) if e["uid"] == ref.get("uid")]
    if not entries or ref.get("name") != service:
        return "owner gone"
    try:
        spec = parse_spec(entries[0]["spec"], service)
    except InvalidSpecError:
        return "owner spec invalid"
    desired = CHILD_BUILDERS[plural](_owner(service, ns, entries[0]["uid"], spec), _images(memo))
    if desired is None or desired["metadata"]["name"] != meta.get("name"):
        return "not a child the owner wants"
    observed = None
    if type == "MODIFIED":  # this event, or a later version the operator wrote (its event is on its way)
        observed = _child_writes(memo).current(desired["kind"], ns, meta.get("name") or "", dict(body))
    if observed is not None and not needs_patch(desired, observed):
        return "as desired"  # status, or our own write coming back: nothing to put back
    if not await _owner_alive(_api(memo), ns, service, entries[0]["uid"]):
        return "owner deleted"
    try:
        await apply_child(_api(memo), desired, observed, writes=_child_writes(memo))
    except ForeignChildError:
        return "owned by another"
    return "put back"


for _plural in CHILD_BUILDERS:
    _child_event(_plural)


@kopf.on.event("pods", labels=MANAGED)
async def pod_changed(
    type: str,
    body: kopf.Body,
    namespace: str | None,
    labels: kopf.Labels,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **kw: Any,
) -> None:
    """A new pod gets its service's policy as soon as it appears; sharing state follows every report.

    Logs `pod event TYPE NS/NAME at RV` at DEBUG once the policy is synced, before the sharing pass that
    plans it; each run of sharing passes ends with `sharing passes done` (a test waits for both to know
    that the operator is done with a pod's version)."""
    services, pods_by_service, resolve = _service_index(kw), _pod_index(kw), _resolver(kw)
    api, written = _api(memo), _written(memo)
    service = labels[names.SERVICE_LABEL]
    entries = list(services.get((namespace or "", service), []))
    pod = ObservedPod.from_pod(body)
    _status(memo).mark((namespace or "", service))
    cast(SharingPasses, memo["sharing"]).touched.pod_event(resolve(pod), gone=type == "DELETED")
    if type == "DELETED":
        written.forget(pod.key)
    elif entries:
        try:
            spec = parse_spec(entries[0]["spec"], service)
        except InvalidSpecError:
            spec = None
        if spec is not None:
            await sync_policy(api, spec, [pod], written)
        if pod.gated:
            await _place_gated(api, memo, [pod], kw)
    meta = body.get("metadata") or {}
    logger.debug(f"pod event {type} {namespace}/{meta.get('name')} at {meta.get('resourceVersion')}")
    await _sync_sharing(api, memo, services, pods_by_service, resolve)


async def claim_changed(namespace: str | None, name: str, memo: kopf.Memo, **kw: Any) -> None:
    """A claim allocated (or freed) by the scheduler: its pods' groups are known now (DRA). The initial
    listing counts too: at a restart a pod's own event may have come before its claim was indexed."""
    services, pods_by_service, resolve = _service_index(kw), _pod_index(kw), _resolver(kw)
    touched = cast(SharingPasses, memo["sharing"]).touched
    found = False
    for store in list(pods_by_service.values()):
        for pod in store:
            if pod.namespace == (namespace or "") and name in pod.claims:
                touched.pod_event(resolve(pod))
                found = True
    if found:
        await _sync_sharing(_api(memo), memo, services, pods_by_service, resolve)


if DRA:
    kopf.on.event("resource.k8s.io", "v1", "resourceclaims")(claim_changed)


async def _place_gated(api: Api, memo: kopf.Memo, pods: list[PodInfo], kw: dict[str, Any]) -> None:
    """placement: preferIdle. A gated pod gets a preferred node affinity for the nodes whose idle models could
    free the most GPU memory for it (now, from the pods' reports), then its gate goes: a pod's affinity can
    only be set while it is gated, so the preference is as fresh as the moment the pod is scheduled."""
    services, pods_by_service, resolve = _service_index(kw), _pod_index(kw), _resolver(kw)
    everyone: list[PodInfo] | None = None
    for pod in pods:
        if not pod.gated or pod.terminating:
            continue
        entries = list(services.get((pod.namespace, pod.service), []))
        try:
            priority = parse_spec(entries[0]["spec"], pod.service).residency.priority if entries else 0
        except InvalidSpecError:
            priority = 0
        if everyone is None:
            everyone = [resolve(p) for store in pods_by_service.values() for p in store]
        affinity = node_affinity(preferred_nodes((p for p in everyone if p.key != pod.key), priority))
        observed = await api.get("Pod", pod.namespace, pod.name)
        if observed is None:
            continue
        spec = observed.get("spec") or {}
        gates = [g for g in spec.get("schedulingGates") or [] if g.get("name") != names.PLACEMENT_GATE]
        if len(gates) == len(spec.get("schedulingGates") or []):
            continue  # already placed
        patch: dict[str, Any] = {
            "metadata": {"resourceVersion": observed["metadata"]["resourceVersion"]},
            "spec": {"schedulingGates": gates or None},
        }
        if affinity:
            patch["spec"]["affinity"] = affinity
        try:
            await api.patch("Pod", pod.namespace, pod.name, patch)
        except KubeApiError as exc:
            if exc.status not in (404, 409):  # gone, or changed meanwhile: its next event places it
                raise


@dataclass
class SharingPasses:
    """One sharing pass at a time. Every pod event asks for one; passes running side by side would plan from
    different moments of the index and write each other's older values back. A pass plans only the GPU
    groups the events since the last pass touched: the cost of an event is its group, not the cluster."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    touched: Touched = field(default_factory=Touched)
    # request id -> the pod it was sent to: a pass prunes only the ids of the pods it planned.
    issued: dict[str, str] = field(default_factory=dict)


async def _sync_sharing(
    api: Api,
    memo: kopf.Memo,
    services: kopf.Index[tuple[str, str], Any],
    pods_by_service: kopf.Index[tuple[str, str], PodInfo],
    resolve: Callable[[PodInfo], PodInfo],
) -> None:
    """Run a sharing pass, or, while one runs, leave what was touched to the next one, run when it ends: the
    indexes are live, so that pass sees every event that asked meanwhile (a burst of reports is a pass or
    two, not one each)."""
    passes = cast(SharingPasses, memo["sharing"])
    if passes.lock.locked():
        return
    async with passes.lock:
        while passes.touched:
            await _sharing_pass(api, memo, passes, passes.touched.take(), services, pods_by_service, resolve)
        log.debug("sharing passes done")


def _budgets(services: kopf.Index[tuple[str, str], Any], pods: list[PodInfo]) -> dict[str, int | None]:
    """Each service's GPU budget: its share (gpu.sharing.memory) or memoryBudgetBytes, the smaller."""
    budgets: dict[str, int | None] = {}
    for namespace, name in {(p.namespace, p.service) for p in pods}:
        for entry in services.get((namespace, name), []):
            try:
                budgets[f"{namespace}/{name}"] = parse_spec(entry["spec"], name).gpu.budget_bytes
            except InvalidSpecError:
                budgets[f"{namespace}/{name}"] = None
    return budgets


async def _sharing_pass(
    api: Api,
    memo: kopf.Memo,
    passes: SharingPasses,
    touched: Touched,
    services: kopf.Index[tuple[str, str], Any],
    pods_by_service: kopf.Index[tuple[str, str], PodInfo],
    resolve: Callable[[PodInfo], PodInfo],
) -> None:
    written = _written(memo)
    # What the pods hold: the index (with DRA claims' allocations), plus what this operator wrote that the
    # index does not show yet.
    pods = [
        written.effective(pod)
        for pod in touched.select(resolve(pod) for store in pods_by_service.values() for pod in store)
    ]
    issued = passes.issued
    # A peer that removed its request (the acknowledgement) but has not reported since is still freeing that
    # memory: the plan must see it as asked, or a pass in between would ask one more peer for the same bytes.
    # Agents now acknowledge in the same patch as their new report, so this is a safety net: for an agent
    # that could not read its runtime at that moment, and for older agents.
    current = {p.key: request_id(p) for p in pods}
    pods = [
        replace(p, offload_request=ACKNOWLEDGED) if not p.offload_request and current[p.key] in issued else p
        for p in pods
    ]
    changes = plan_gpu_sharing(pods, _budgets(services, pods), datetime.now(UTC), frozenset(issued))
    # An id names one report of one pod, and reports only move forward: ids of superseded reports go (of the
    # pods planned here, and of touched pods that are gone; any other pod's report has not moved).
    planned = touched.pods | current.keys()
    live = set(current.values())
    for rid in [rid for rid, key in issued.items() if key in planned and rid not in live]:
        del issued[rid]
    by_key = {pod.key: pod for pod in pods}
    for key, values in changes.items():
        if key in by_key:
            await patch_annotations(api, by_key[key], values, written)
            request = ann.parse(ann.OffloadRequestValue, values.get(ann.OFFLOAD_REQUEST))
            if request is not None:
                issued[request.id] = key
