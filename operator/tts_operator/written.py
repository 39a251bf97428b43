"""What the operator last wrote on each pod's annotations, until its watch (kopf's index) shows it."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from tts_contract import annotations as ann
from tts_operator.status import PodInfo

# The annotations the operator writes, and the PodInfo field that holds what the watch shows of each.
FIELDS = {ann.POLICY: "policy", ann.GPU_SHARE: "gpu_share", ann.OFFLOAD_REQUEST: "offload_request"}


@dataclass(frozen=True)
class ObservedPod(PodInfo):
    """A pod as the watch showed it, with the version that tells whether it already includes our writes."""

    resource_version: str = ""

    @classmethod
    def from_pod(cls, body: Any) -> ObservedPod:
        info = PodInfo.from_pod(body)
        version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        return cls(**{f.name: getattr(info, f.name) for f in fields(PodInfo)}, resource_version=version)


def _version(value: str) -> int | None:
    return int(value) if value.isdigit() else None


def includes(observed: str, written: str) -> bool:
    """Whether a pod at version `observed` already shows a write answered with version `written`.

    resourceVersion is opaque to clients; every API server we know numbers it from one increasing counter,
    and where it is not a number the entry simply lives out its time to live."""
    seen, ours = _version(observed), _version(written)
    return seen is not None and ours is not None and seen >= ours


@dataclass
class _Entry:
    value: str | None
    version: str
    at: float


class Written:
    """Per pod and annotation: the value the operator last wrote and the pod version its PATCH produced.

    Every pod event re-plans sharing from kopf's index, which lags behind the operator's own writes: without
    this, a pass would see the old value and write the same new one again. An entry counts for observations
    of the pod older than the version its PATCH produced; a newer observation already shows it, and anything
    written after it (e.g. an agent's acknowledgement). Entries go when the pod goes or after `ttl` (which
    also ends an entry whose version the watch never shows); at most `max_pods` pods are kept."""

    def __init__(
        self, ttl: float = 30.0, max_pods: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_pods = max_pods
        self._clock = clock
        self._pods: OrderedDict[str, dict[str, _Entry]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pods)

    def _live(self, pod: PodInfo) -> dict[str, _Entry]:
        """The pod's entries that `pod` (one observation of it) does not show yet.

        An entry the watch has shown is kept until `ttl` all the same: a pass planned from an older
        observation of the pod can still be waiting to write, and must still see it as written."""
        entries = self._pods.get(pod.key)
        if entries is None:
            return {}
        now = self._clock()
        for key, entry in list(entries.items()):
            if now - entry.at > self.ttl:
                del entries[key]
        if not entries:
            del self._pods[pod.key]
            return {}
        observed = pod.resource_version if isinstance(pod, ObservedPod) else ""
        return {k: e for k, e in entries.items() if not includes(observed, e.version)}

    def effective(self, pod: PodInfo) -> PodInfo:
        """The pod as it is on the API server: what the watch shows, plus our writes it does not show yet."""
        entries = self._live(pod)
        if not entries:
            return pod
        shown: dict[str, Any] = {FIELDS[key]: entry.value for key, entry in entries.items()}
        return replace(pod, **shown)

    def unwritten(self, pod: PodInfo, values: Mapping[str, str | None]) -> dict[str, str | None]:
        """The values that differ from what the pod holds (as `effective` sees it): the ones worth a PATCH."""
        holds = self.effective(pod)
        return {k: v for k, v in values.items() if k not in FIELDS or getattr(holds, FIELDS[k]) != v}

    def wrote(self, pod: PodInfo, values: Mapping[str, str | None], version: str = "") -> None:
        """Record a PATCH: before sending it (no version: a concurrent pass must not send it again while this
        one waits for the answer), then with the pod version the API server answered."""
        entries = self._pods.setdefault(pod.key, {})
        self._pods.move_to_end(pod.key)
        now = self._clock()
        for key, value in values.items():
            if key not in FIELDS:
                continue
            if version and key in entries and entries[key].value != value:
                continue  # a later write of another value was sent meanwhile: that is what the pod holds
            entries[key] = _Entry(value, version, now)
        while len(self._pods) > self.max_pods:
            self._pods.popitem(last=False)

    def unsent(self, pod: PodInfo, values: Mapping[str, str | None]) -> None:
        """The PATCH failed: what the watch shows is what the pod holds."""
        entries = self._pods.get(pod.key, {})
        for key, value in values.items():
            if key in entries and entries[key].value == value:
                del entries[key]

    def forget(self, key: str) -> None:
        """The pod is gone ("ns/name"): a new pod under its name starts from what the watch shows."""
        self._pods.pop(key, None)
