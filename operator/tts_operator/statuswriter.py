"""Status writes: each TTSService's status written once per change (the handlers debounce the calls)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tts_operator.allocations import NO_DRA, dra_enabled
from tts_operator.api import Api
from tts_operator.kube import KubeApiError
from tts_operator.spec import InvalidSpecError, parse_spec
from tts_operator.status import PodInfo, aggregate, status_changed
from tts_operator.written import includes


@dataclass
class _Wrote:
    status: dict[str, Any]
    version: str
    at: float


ServiceKey = tuple[str, str]  # (namespace, name)


class StatusWriter:
    """Computes a service's status from the indexes and patches `/status` when it differs from what the
    service holds: what the watch shows, or what this writer wrote and the watch does not show yet (the
    index lags behind our own writes; comparing with it alone would write the same status twice)."""

    def __init__(
        self,
        api: Api,
        services: Callable[[ServiceKey], list[dict[str, Any]]],
        pods: Callable[[ServiceKey], list[PodInfo]],
        ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._services = services
        self._pods = pods
        self._ttl = ttl
        self._clock = clock
        self._wrote: dict[ServiceKey, _Wrote] = {}

    def _current(self, key: ServiceKey, entry: dict[str, Any]) -> dict[str, Any]:
        wrote = self._wrote.get(key)
        if wrote is not None and (
            self._clock() - wrote.at > self._ttl or includes(str(entry.get("version") or ""), wrote.version)
        ):
            del self._wrote[key]
            wrote = None
        return dict(wrote.status if wrote is not None else entry.get("status") or {})

    async def write(self, key: ServiceKey) -> bool:
        """Write the status of service `key` if it changed; returns whether a PATCH was sent."""
        live = [e for e in self._services(key) if not e.get("deleting")]
        if not live:
            self._wrote.pop(key, None)
            return False
        entry, (namespace, name) = live[-1], key
        invalid: str | None = None
        replicas, port = 0, 8000
        try:
            parsed = parse_spec(entry["spec"], name)
            replicas, port = parsed.replicas, parsed.port
            if parsed.gpu.sharing.mode == "dra" and parsed.gpu.count > 0 and not dra_enabled():
                invalid = NO_DRA
        except InvalidSpecError as exc:
            invalid = str(exc)
        current = self._current(key, entry)
        desired = aggregate(
            self._pods(key),
            replicas=replicas,
            generation=int(entry.get("generation") or 0),
            endpoint=f"http://{name}.{namespace}.svc.cluster.local:{port}",
            conditions=list(current.get("conditions") or []),
            now=datetime.now(UTC),
            invalid=invalid,
        )
        if not status_changed(current, desired):
            return False
        try:
            patched = await self._api.patch("TTSService", namespace, name, {"status": desired}, sub="status")
        except KubeApiError as exc:
            if exc.status == 404:  # deleted meanwhile: nothing to report on
                self._wrote.pop(key, None)
                return False
            raise
        version = str(((patched or {}).get("metadata") or {}).get("resourceVersion") or "")
        self._wrote[key] = _Wrote({**current, **desired}, version, self._clock())
        return True
