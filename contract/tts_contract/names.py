"""Names of the contract: API group, kind, label keys, the pod's env names and paths, and name patterns."""

from __future__ import annotations

import re

GROUP = "tts.residency.dev"
VERSION = "v1alpha1"
KIND = "TTSService"
PLURAL = "ttsservices"

PLACEMENT_GATE = f"{GROUP}/placement"  # scheduling gate: the operator sets the pod's preferred nodes first

SERVICE_LABEL = f"{GROUP}/service"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "tts-operator"
NAME_LABEL = "app.kubernetes.io/name"
NAME = "residency"

# Patterns are RE2-compatible and ASCII-only, so the CRD (Go regexp) and Python (re.fullmatch) agree on
# every string; `\w` and a bare `$` are avoided on purpose (Unicode letters, a trailing newline).
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# The name requests use (`"model": ...`, `/v1/models/{model}`): 1-63 characters.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
# `package.module:callable`, the callable possibly an attribute path (`pkg.mod:Cls.create`).
FACTORY_PATTERN = rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$"
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"

# A TTSService's children append "-agent" (6 characters) to its name and must stay DNS labels (63).
MAX_SERVICE_NAME_LENGTH = 57
# The pod the operator builds: what it tells the runtime and the agent, and where the two meet.
RUNTIME_ENV_PREFIX = "TTS_RUNTIME_"  # each field of tts-runtime's settings is TTS_RUNTIME_<FIELD>
MODELS_JSON_ENV = f"{RUNTIME_ENV_PREFIX}MODELS_JSON"  # {"models": [ModelSpec, ...]}
ADMIN_TOKEN_ENV = f"{RUNTIME_ENV_PREFIX}ADMIN_TOKEN"
ADMIN_TOKEN_FILE_ENV = f"{RUNTIME_ENV_PREFIX}ADMIN_TOKEN_FILE"
GPU_MEMORY_BUDGET_ENV = f"{RUNTIME_ENV_PREFIX}GPU_MEMORY_BUDGET_BYTES"  # the pod's share of a shared GPU
DRAIN_TIMEOUT_ENV = f"{RUNTIME_ENV_PREFIX}DRAIN_TIMEOUT_SECONDS"
POD_NAME_ENV = "POD_NAME"  # the agent's own pod, from the downward API
POD_NAMESPACE_ENV = "POD_NAMESPACE"
SHARED_DIR = "/var/run/residency"  # an in-memory volume the runtime and the agent both mount
ADMIN_TOKEN_FILE = f"{SHARED_DIR}/admin-token"  # the runtime writes the admin token there, the agent reads it
# Env names the operator sets on the runtime container itself; a user value would silently break the pod.
RESERVED_ENV = (
    MODELS_JSON_ENV,
    ADMIN_TOKEN_ENV,
    ADMIN_TOKEN_FILE_ENV,
    GPU_MEMORY_BUDGET_ENV,
    DRAIN_TIMEOUT_ENV,  # the pod's grace period is computed from it
    POD_NAME_ENV,
    POD_NAMESPACE_ENV,
)


def matches(pattern: str, value: str) -> bool:
    """Whether the whole `value` matches `pattern` the way the API server's pattern check does."""
    return re.fullmatch(pattern, value) is not None
