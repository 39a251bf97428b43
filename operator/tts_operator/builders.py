"""Pure builders: a TTSService (name, uid, parsed spec) becomes the manifests of its children."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from tts_contract import names
from tts_contract.names import (
    ADMIN_TOKEN_FILE,
    ADMIN_TOKEN_FILE_ENV,
    DRAIN_TIMEOUT_ENV,
    GPU_MEMORY_BUDGET_ENV,
    MODELS_JSON_ENV,
    POD_NAME_ENV,
    POD_NAMESPACE_ENV,
    SHARED_DIR,
)
from tts_operator.settings import AGENT_IMAGE, DRAIN_SECONDS, RUNTIME_IMAGE
from tts_operator.spec import MIB, TTSServiceSpec

UID = 10001
RUNTIME_PORT = 8000
AGENT_PORT = 8081
WEIGHTS_DIR = "/models"
CACHE_DIR = "/var/cache/residency"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# HAMi's extended resources and per-pod scheduling policy (https://github.com/Project-HAMi/HAMi).
HAMI_MEMORY = "nvidia.com/gpumem"  # MiB per GPU
HAMI_CORES = "nvidia.com/gpucores"  # percent per GPU
HAMI_POLICIES = ("hami.io/node-scheduler-policy", "hami.io/gpu-scheduler-policy")
CLAIM = "gpu"  # the pod's resourceClaims entry (DRA) and the runtime container's resources.claims name
CLAIM_SPEC = f"{names.GROUP}/claim-spec"  # pod template annotation: a hash of the claim template's spec
# What the kubelet allows past the runtime's drain budget (OperatorSettings.runtime_drain_seconds) before
# SIGKILL: killing and reaping workers, the interpreter's exit.
GRACE_MARGIN_SECONDS = 15

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """What the children need to know about their TTSService."""

    name: str
    namespace: str
    uid: str
    spec: TTSServiceSpec


@dataclass(frozen=True)
class Images:
    """What the operator's own settings (the chart's values) put into every inference pod."""

    runtime: str = RUNTIME_IMAGE
    agent: str = AGENT_IMAGE
    drain_seconds: float = DRAIN_SECONDS

    def grace_seconds(self) -> int:
        """The pod's terminationGracePeriodSeconds: always past the runtime's drain."""
        return math.ceil(self.drain_seconds) + GRACE_MARGIN_SECONDS


def labels(service: str) -> dict[str, str]:
    return {
        names.MANAGED_BY_LABEL: names.MANAGED_BY,
        names.NAME_LABEL: names.NAME,
        names.SERVICE_LABEL: service,
    }


def agent_name(service: str) -> str:
    return f"{service}-agent"


def endpoint(owner: Owner) -> str:
    return f"http://{owner.name}.{owner.namespace}.svc.cluster.local:{owner.spec.port}"


def _meta(owner: Owner, name: str) -> Manifest:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner.name),
        "ownerReferences": [
            {
                "apiVersion": f"{names.GROUP}/{names.VERSION}",
                "kind": "TTSService",
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def models_json(spec: TTSServiceSpec) -> str:
    """`TTS_RUNTIME_MODELS_JSON`: the runtime's `ModelSpec`, built (so validated) by the contract. The
    policy is left out on purpose: a policy edit must not change the pod template (that would roll out);
    the agent applies `spec.residency` before the pod reports ready."""
    entry = spec.model.model_spec(WEIGHTS_DIR).model_dump(
        mode="json", by_alias=True, include={"name", "variant", "backend", "factory", "options"}
    )
    return json.dumps({"models": [entry]}, sort_keys=True, separators=(",", ":"))


def _container_security() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def _probe(path: str, port: str, period: int, failures: int) -> Manifest:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def binary_quantity(n: int) -> str:
    """Whole MiB as the API server writes a binary quantity back (largest exact suffix), so that the level
    check compares like with like: 8192 MiB -> "8Gi"."""
    value, suffix = n // MIB, "Mi"
    for bigger in ("Gi", "Ti", "Pi"):
        if value % 1024:
            break
        value, suffix = value // 1024, bigger
    return f"{value}{suffix}"


def claim_template_name(service: str) -> str:
    return f"{service}-gpu"


def _gpu_resources(spec: TTSServiceSpec, resources: Manifest) -> None:
    """The GPU part of the runtime container's resources, by sharing mode (DRA uses a claim instead)."""
    gpu, sharing = spec.gpu, spec.gpu.sharing
    if gpu.count == 0:
        return
    if sharing.mode == "dra":
        resources["claims"] = [{"name": CLAIM}]
        return
    limits = resources.setdefault("limits", {})
    limits[gpu.resource_name] = str(gpu.count)
    if sharing.mode == "hami":
        limits[HAMI_MEMORY] = str((sharing.memory_bytes or 0) // MIB)
        if sharing.cores is not None:
            limits[HAMI_CORES] = str(sharing.cores)


def _runtime_container(owner: Owner, images: Images) -> Manifest:
    spec = owner.spec
    resources: Manifest = json.loads(json.dumps(spec.resources))  # a deep copy: never mutate the spec
    _gpu_resources(spec, resources)
    env = [
        {"name": MODELS_JSON_ENV, "value": models_json(spec)},
        {"name": ADMIN_TOKEN_FILE_ENV, "value": ADMIN_TOKEN_FILE},
        {"name": DRAIN_TIMEOUT_ENV, "value": f"{images.drain_seconds:g}"},
        {"name": "HF_HOME", "value": CACHE_DIR},
        *[e.model_dump(by_alias=True, exclude_none=True) for e in spec.env],
    ]
    budget = spec.gpu.budget_bytes
    if budget is not None:
        # The share the pod is scheduled with: the runtime keeps its models within it (never a CUDA OOM).
        env.insert(2, {"name": GPU_MEMORY_BUDGET_ENV, "value": str(budget)})
    mounts: list[Manifest] = [
        {"name": "residency", "mountPath": SHARED_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    if spec.model.source is not None and spec.model.source.pvc is not None:
        mounts.append({"name": "weights", "mountPath": WEIGHTS_DIR, "readOnly": True})
    container: Manifest = {
        "name": "runtime",
        "image": spec.image or images.runtime,
        "command": ["tts-runtime", "serve", "--host", "0.0.0.0", "--port", str(RUNTIME_PORT)],
        "ports": [{"name": "http", "containerPort": RUNTIME_PORT, "protocol": "TCP"}],
        "env": env,
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": _container_security(),
        # Imports and CUDA init can take a while; the startup probe covers it so liveness can stay strict.
        "startupProbe": _probe("/healthz", "http", 5, 60),
        "livenessProbe": _probe("/healthz", "http", 10, 3),
        "readinessProbe": _probe("/readyz", "http", 5, 3),
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    return container


def _agent_container(images: Images) -> Manifest:
    def field(path: str) -> Manifest:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    return {
        "name": "agent",
        "image": images.agent,
        "command": ["tts-operator", "agent"],
        "ports": [{"name": "agent", "containerPort": AGENT_PORT, "protocol": "TCP"}],
        "env": [
            {"name": POD_NAME_ENV, **field("metadata.name")},
            {"name": POD_NAMESPACE_ENV, **field("metadata.namespace")},
        ],
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
        "volumeMounts": [
            {"name": "residency", "mountPath": SHARED_DIR},
            {"name": "kube-api-access", "mountPath": TOKEN_DIR, "readOnly": True},
        ],
        "securityContext": _container_security(),
        "livenessProbe": _probe("/healthz", "agent", 10, 3),
        # Ready only after the first policy sync: no traffic reaches a pod before its policy.
        "readinessProbe": _probe("/readyz", "agent", 2, 3),
    }


def _volumes(spec: TTSServiceSpec) -> list[Manifest]:
    volumes: list[Manifest] = [
        {"name": "residency", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        {"name": "cache", "emptyDir": {}},
        # The agent's API token, mounted into the agent only (the pod does not automount it anywhere).
        {
            "name": "kube-api-access",
            "projected": {
                "defaultMode": 0o444,
                "sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                        }
                    },
                ],
            },
        },
    ]
    if spec.model.source is not None and spec.model.source.pvc is not None:
        volumes.append(
            {
                "name": "weights",
                "persistentVolumeClaim": {"claimName": spec.model.source.pvc.claim_name, "readOnly": True},
            }
        )
    return volumes


def build_deployment(owner: Owner, images: Images) -> Manifest:
    spec = owner.spec
    # A GPU pod cannot surge when every GPU is taken; replace one at a time instead of waiting forever.
    strategy = (
        {"maxSurge": 0, "maxUnavailable": 1} if spec.gpu.count > 0 else {"maxSurge": 1, "maxUnavailable": 0}
    )
    pod_spec: Manifest = {
        "serviceAccountName": agent_name(owner.name),
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": images.grace_seconds(),
        "containers": [_runtime_container(owner, images), _agent_container(images)],
        "volumes": _volumes(spec),
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = json.loads(json.dumps(spec.tolerations))
    template_meta: Manifest = {"labels": labels(owner.name)}
    _sharing_pod(owner, pod_spec, template_meta)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(owner, owner.name),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": labels(owner.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": strategy},
            "template": {"metadata": template_meta, "spec": pod_spec},
        },
    }


def _sharing_pod(owner: Owner, pod_spec: Manifest, template_meta: Manifest) -> None:
    """The pod template's part of GPU sharing: the DRA claim, the placement gate, HAMi's policy."""
    gpu, sharing = owner.spec.gpu, owner.spec.gpu.sharing
    if gpu.count == 0:
        return
    annotations: dict[str, str] = {}
    if sharing.mode == "dra":
        claim = sharing.claim
        if claim.resource_claim_name is not None:
            pod_spec["resourceClaims"] = [{"name": CLAIM, "resourceClaimName": claim.resource_claim_name}]
        else:
            pod_spec["resourceClaims"] = [
                {"name": CLAIM, "resourceClaimTemplateName": claim_template_name(owner.name)}
            ]
            # A template's spec is immutable: a change re-creates it, and this hash rolls the pods out so
            # that their claims are made from the new one.
            digest = json.dumps(build_resource_claim_template(owner)["spec"], sort_keys=True).encode()
            annotations[CLAIM_SPEC] = hashlib.sha256(digest).hexdigest()[:16]
    if sharing.placement == "preferIdle":
        # The operator removes the gate once it has given the pod its preferred nodes (affinity can be set
        # only while a pod is gated).
        pod_spec["schedulingGates"] = [{"name": names.PLACEMENT_GATE}]
        if sharing.mode == "hami":
            annotations.update(dict.fromkeys(HAMI_POLICIES, "binpack"))  # onto GPUs peers already use
    if annotations:
        template_meta["annotations"] = annotations


def wants_claim_template(spec: TTSServiceSpec) -> bool:
    sharing = spec.gpu.sharing
    return spec.gpu.count > 0 and sharing.mode == "dra" and sharing.claim.resource_claim_name is None


def build_resource_claim_template(owner: Owner) -> Manifest:
    """DRA: the claim each pod gets (resource.k8s.io/v1): `gpu.count` devices of the class, the memory share
    as a capacity request, and NVIDIA's GpuConfig for the sharing strategy (TimeSlicing or MPS)."""
    gpu, sharing = owner.spec.gpu, owner.spec.gpu.sharing
    claim = sharing.claim
    exactly: Manifest = {
        "deviceClassName": claim.device_class_name,
        "allocationMode": "ExactCount",
        "count": gpu.count,
    }
    memory = sharing.memory_bytes
    if memory is not None:
        exactly["capacity"] = {"requests": {"memory": binary_quantity(memory)}}
    devices: Manifest = {"requests": [{"name": CLAIM, "exactly": exactly}]}
    if claim.strategy is not None:
        if claim.strategy == "MPS":
            mps: Manifest = {}
            if sharing.cores is not None:
                mps["defaultActiveThreadPercentage"] = sharing.cores
            if memory is not None:
                mps["defaultPinnedDeviceMemoryLimit"] = binary_quantity(memory)
            shared: Manifest = {"strategy": "MPS", "mpsConfig": mps}
        else:
            shared = {
                "strategy": "TimeSlicing",
                "timeSlicingConfig": {"interval": claim.interval or "Default"},
            }
        devices["config"] = [
            {
                "requests": [CLAIM],
                "opaque": {
                    "driver": claim.driver,
                    "parameters": {
                        "apiVersion": "resource.nvidia.com/v1beta1",
                        "kind": "GpuConfig",
                        "sharing": shared,
                    },
                },
            }
        ]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": _meta(owner, claim_template_name(owner.name)),
        "spec": {"spec": {"devices": devices}},
    }


def build_service(owner: Owner) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, owner.name),
        "spec": {
            "type": "ClusterIP",
            "selector": labels(owner.name),
            "ports": [{"name": "http", "port": owner.spec.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_service_account(owner: Owner) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(owner, agent_name(owner.name)),
        "automountServiceAccountToken": False,
    }


def build_role(owner: Owner) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(owner, agent_name(owner.name)),
        # The agent reads and annotates its own pod. A Deployment's pod names are not known in advance, so
        # resourceNames cannot narrow this; the Role is namespaced, pods only, and no create/delete.
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]}],
    }


def build_role_binding(owner: Owner) -> Manifest:
    name = agent_name(owner.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(owner, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }


def build_children(owner: Owner, images: Images) -> list[Manifest]:
    """Every child, in the order to create them (the binding's account and the claim template before the
    pods that use them)."""
    claims = [build_resource_claim_template(owner)] if wants_claim_template(owner.spec) else []
    return [
        build_service_account(owner),
        build_role(owner),
        build_role_binding(owner),
        build_service(owner),
        *claims,
        build_deployment(owner, images),
    ]


def differs(desired: Any, observed: Any) -> bool:
    """Whether `observed` lacks or changed anything `desired` sets. Fields the API server adds are ignored:
    only keys we set are compared (lists must match element by element)."""
    if isinstance(desired, dict):
        if not isinstance(observed, dict):
            return True
        return any(differs(value, observed.get(key)) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(observed, list) or len(desired) != len(observed):
            return True
        return any(differs(d, o) for d, o in zip(desired, observed, strict=True))
    if isinstance(desired, int | float) and isinstance(observed, str):
        return str(desired) != observed  # quantities come back as strings
    return bool(desired != observed)
