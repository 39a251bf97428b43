"""Pure builders: a TTSService (name, uid, parsed spec) becomes the manifests of its children."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from tts_operator import annotations as ann
from tts_operator.spec import TTSServiceSpec

RUNTIME_IMAGE = "ghcr.io/residency-dev/residency-runtime:0.1.0"
AGENT_IMAGE = "ghcr.io/residency-dev/residency-operator:0.1.0"
UID = 10001
RUNTIME_PORT = 8000
AGENT_PORT = 8081
SHARED_DIR = "/var/run/residency"
WEIGHTS_DIR = "/models"
CACHE_DIR = "/var/cache/residency"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

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
    runtime: str = RUNTIME_IMAGE
    agent: str = AGENT_IMAGE

    @classmethod
    def from_env(cls) -> Images:
        return cls(runtime=os.environ.get("RESIDENCY_RUNTIME_IMAGE") or RUNTIME_IMAGE,
                   agent=os.environ.get("RESIDENCY_AGENT_IMAGE") or AGENT_IMAGE)


def labels(service: str) -> dict[str, str]:
    return {ann.MANAGED_BY_LABEL: ann.MANAGED_BY, ann.NAME_LABEL: ann.NAME, ann.SERVICE_LABEL: service}


def agent_name(service: str) -> str:
    return f"{service}-agent"


def endpoint(owner: Owner) -> str:
    return f"http://{owner.name}.{owner.namespace}.svc.cluster.local:{owner.spec.port}"


def _meta(owner: Owner, name: str) -> Manifest:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner.name),
        "ownerReferences": [{
            "apiVersion": f"{ann.GROUP}/{ann.VERSION}", "kind": "TTSService", "name": owner.name,
            "uid": owner.uid, "controller": True, "blockOwnerDeletion": True,
        }],
    }


def models_json(spec: TTSServiceSpec) -> str:
    """`TTS_RUNTIME_MODELS_JSON`. The policy is left out on purpose: a policy edit must not change the pod
    template (that would roll out); the agent applies `spec.residency` before the pod reports ready."""
    model = spec.model
    options = dict(model.options)
    if model.source is not None and model.source.uri is not None:
        options.setdefault("weights", model.source.uri)
    elif model.source is not None and model.source.pvc is not None:
        options.setdefault("weights", f"{WEIGHTS_DIR}/{model.source.pvc.sub_path}".rstrip("/"))
    entry = {"name": model.name, "variant": model.variant, "backend": model.backend,
             "factory": model.factory, "options": options}
    return json.dumps({"models": [entry]}, sort_keys=True, separators=(",", ":"))


def _container_security() -> Manifest:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _probe(path: str, port: str, period: int, failures: int) -> Manifest:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "timeoutSeconds": 3,
            "failureThreshold": failures}


def _runtime_container(owner: Owner, images: Images) -> Manifest:
    spec = owner.spec
    resources: Manifest = json.loads(json.dumps(spec.resources))  # a deep copy: never mutate the spec
    if spec.gpu.count > 0:
        resources.setdefault("limits", {})[spec.gpu.resource_name] = str(spec.gpu.count)
    env = [
        {"name": "TTS_RUNTIME_MODELS_JSON", "value": models_json(spec)},
        {"name": "TTS_RUNTIME_ADMIN_TOKEN_FILE", "value": f"{SHARED_DIR}/admin-token"},
        {"name": "HF_HOME", "value": CACHE_DIR},
        *[e.model_dump(by_alias=True, exclude_none=True) for e in spec.env],
    ]
    mounts: list[Manifest] = [
        {"name": "residency", "mountPath": SHARED_DIR}, {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"}, {"name": "cache", "mountPath": CACHE_DIR}]
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
        "env": [{"name": "POD_NAME", **field("metadata.name")},
                {"name": "POD_NAMESPACE", **field("metadata.namespace")}],
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
        "volumeMounts": [{"name": "residency", "mountPath": SHARED_DIR},
                         {"name": "kube-api-access", "mountPath": TOKEN_DIR, "readOnly": True}],
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
        {"name": "kube-api-access", "projected": {"defaultMode": 0o444, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                                        "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
        ]}},
    ]
    if spec.model.source is not None and spec.model.source.pvc is not None:
        volumes.append({"name": "weights", "persistentVolumeClaim": {
            "claimName": spec.model.source.pvc.claim_name, "readOnly": True}})
    return volumes


def build_deployment(owner: Owner, images: Images) -> Manifest:
    spec = owner.spec
    # A GPU pod cannot surge when every GPU is taken; replace one at a time instead of waiting forever.
    strategy = ({"maxSurge": 0, "maxUnavailable": 1} if spec.gpu.count > 0
                else {"maxSurge": 1, "maxUnavailable": 0})
    pod_spec: Manifest = {
        "serviceAccountName": agent_name(owner.name),
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 45,  # the runtime drains leases for up to 30 s
        "containers": [_runtime_container(owner, images), _agent_container(images)],
        "volumes": _volumes(spec),
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = json.loads(json.dumps(spec.tolerations))
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(owner, owner.name),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": labels(owner.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": strategy},
            "template": {"metadata": {"labels": labels(owner.name)}, "spec": pod_spec},
        },
    }


def build_service(owner: Owner) -> Manifest:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(owner, owner.name),
        "spec": {"type": "ClusterIP", "selector": labels(owner.name),
                 "ports": [{"name": "http", "port": owner.spec.port, "targetPort": "http",
                            "protocol": "TCP"}]},
    }


def build_service_account(owner: Owner) -> Manifest:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(owner, agent_name(owner.name)),
            "automountServiceAccountToken": False}


def build_role(owner: Owner) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": _meta(owner, agent_name(owner.name)),
        # The agent reads and annotates its own pod. A Deployment's pod names are not known in advance, so
        # resourceNames cannot narrow this; the Role is namespaced, pods only, and no create/delete.
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]}],
    }


def build_role_binding(owner: Owner) -> Manifest:
    name = agent_name(owner.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": _meta(owner, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }


def build_children(owner: Owner, images: Images) -> list[Manifest]:
    """Every child, in the order to create them (the binding's account before the pods that use it)."""
    return [build_service_account(owner), build_role(owner), build_role_binding(owner),
            build_service(owner), build_deployment(owner, images)]


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
