"""Where the scheduler put a pod's GPU: HAMi's allocation annotation and DRA claims' status.allocation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tts_operator import settings as settings_module
from tts_operator.spec import quantity_bytes

# HAMi writes both on the pod when its scheduler extender picks the devices (before binding):
# "<uuid>,<vendor>,<MiB>,<cores>:" per device, ";" between the containers that asked (pkg/device in HAMi).
HAMI_ALLOCATED = "hami.io/vgpu-devices-allocated"
HAMI_NODE = "hami.io/vgpu-node"
MIB = 2**20


@dataclass(frozen=True)
class Device:
    """One allocated GPU: its id (a UUID for HAMi, "<driver>/<pool>/<device>" for DRA) and the share."""

    id: str
    memory_bytes: int | None = None
    cores: int | None = None


@dataclass(frozen=True)
class ClaimAllocation:
    """What the operator keeps of one ResourceClaim (its index value): its devices and their node."""

    devices: tuple[Device, ...] = ()
    node: str | None = None


def _int(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def hami_devices(raw: str | None) -> tuple[Device, ...]:
    """The devices of HAMi's allocation annotation, in order (all containers); () when absent or malformed."""
    devices: list[Device] = []
    for container in (raw or "").split(";"):
        for entry in container.split(":"):
            fields = entry.split(",")
            if len(fields) < 3 or not fields[0].strip():
                continue
            mib, cores = _int(fields[2]), _int(fields[3]) if len(fields) > 3 else None
            devices.append(
                Device(
                    id=fields[0].strip(), memory_bytes=None if mib is None else mib * MIB, cores=cores or None
                )
            )  # HAMi writes 0 cores for "no core limit"
    return tuple(devices)


def _node_of(selector: Any) -> str | None:
    """The node a node-local allocation names (`matchFields metadata.name In [node]`), else None."""
    for term in (selector or {}).get("nodeSelectorTerms") or []:
        for field in term.get("matchFields") or []:
            values = field.get("values") or []
            if field.get("key") == "metadata.name" and field.get("operator") == "In" and len(values) == 1:
                return str(values[0])
    return None


def claim_allocation(claim: Mapping[str, Any]) -> ClaimAllocation:
    """A ResourceClaim's allocation (resource.k8s.io/v1 status.allocation); empty while unallocated."""
    allocation = (claim.get("status") or {}).get("allocation") or {}
    devices = []
    for result in (allocation.get("devices") or {}).get("results") or []:
        if not result.get("device"):
            continue
        consumed = (result.get("consumedCapacity") or {}).get("memory")
        devices.append(
            Device(
                id=f"{result.get('driver')}/{result.get('pool')}/{result['device']}",
                memory_bytes=_quantity(consumed),
            )
        )
    return ClaimAllocation(devices=tuple(devices), node=_node_of(allocation.get("nodeSelector")))


def _quantity(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return quantity_bytes(value)
    except ValueError:
        return None


def pod_claims(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The ResourceClaims a pod uses: made for it from a template (status.resourceClaimStatuses) or named."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    made = [s.get("resourceClaimName") for s in status.get("resourceClaimStatuses") or []]
    named = [c.get("resourceClaimName") for c in spec.get("resourceClaims") or []]
    return tuple(sorted({str(n) for n in made + named if n}))


NO_DRA = (
    "gpu.sharing.mode dra: this operator does not watch resource.k8s.io/v1 ResourceClaims (the API is "
    "not served, or RBAC does not let it list/watch resourceclaims and list/watch/create/delete "
    "resourceclaimtemplates; its log says which at start): grant them and restart it, or pick another "
    "mode"
)


def dra_enabled() -> bool:
    """Whether `tts-operator run` found DRA served and allowed (OperatorSettings.dra, decided at start)."""
    settings = settings_module.loaded()
    return settings is not None and settings.dra == "on"


# What the operator must be allowed to do for DRA mode: watch claims (their allocations) and keep the claim
# templates it owns (create; delete and create again when the spec changes).
DRA_ACCESS = (
    ("resourceclaims", ("list", "watch")),
    ("resourceclaimtemplates", ("list", "watch", "create", "delete")),
)


def dra_available(namespaces: list[str]) -> tuple[bool, str]:
    """Whether this operator can serve DRA mode: the API server serves resource.k8s.io/v1 and RBAC lets it do
    `DRA_ACCESS` (cluster-wide, or in each of `namespaces`), asked with SelfSubjectAccessReviews (which every
    authenticated identity may send). Asked once, at start, so that without DRA no watch is opened that
    would be refused; the reason says what is missing."""
    import kubernetes

    from tts_operator.kube import Kube, KubeApiError, load_config

    try:
        load_config()
    except (kubernetes.config.ConfigException, OSError) as err:
        # Kopf says the same when it starts; DRA is simply off until a restart with credentials.
        return False, f"no Kubernetes credentials to ask with ({err})"
    kube = Kube()
    try:
        try:
            group = kube.request("GET", "/apis/resource.k8s.io") or {}
        except KubeApiError as exc:
            if exc.status != 404:
                return False, f"API discovery failed ({exc})"
            group = {}
        if not any(v.get("version") == "v1" for v in group.get("versions") or []):
            return False, "the API server does not serve resource.k8s.io/v1 (Kubernetes 1.34+)"
        for namespace in namespaces or [""]:
            for resource, verbs in DRA_ACCESS:
                for verb in verbs:
                    attributes = {"group": "resource.k8s.io", "resource": resource, "verb": verb}
                    if namespace:
                        attributes["namespace"] = namespace
                    review = {
                        "apiVersion": "authorization.k8s.io/v1",
                        "kind": "SelfSubjectAccessReview",
                        "spec": {"resourceAttributes": attributes},
                    }
                    answer = kube.request(
                        "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review
                    )
                    if not ((answer or {}).get("status") or {}).get("allowed"):
                        where = f"in namespace {namespace}" if namespace else "cluster-wide"
                        return False, f"RBAC does not allow {verb} on resource.k8s.io {resource} {where}"
    except KubeApiError as exc:
        return False, f"asking the API server failed ({exc})"
    finally:
        kube.close()
    return True, "resource.k8s.io/v1 served and allowed"
