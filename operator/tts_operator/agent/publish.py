"""What in a residency report is worth publishing, and when: a pure diff and the publication's debouncing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from tts_operator.debounce import Debouncer

Report = Mapping[str, Any]

# Fields that change on their own every second without anything happening: publishing them would turn
# every idle pod into a constant stream of API writes.
TICKING_MODEL_FIELDS = frozenset({"idleSeconds"})
# Free GPU memory moves with every allocation of every process on the GPU; only a change of this size
# is news for the operator (it schedules peers in gigabytes, not bytes).
FREE_BYTES_QUANTUM = 64 * 2**20


def significant(report: Report) -> dict[str, Any]:
    """The part of a report that matters to the operator, in a canonical form for comparing."""
    models = [
        {k: v for k, v in model.items() if k not in TICKING_MODEL_FIELDS}
        for model in report.get("models") or []
        if isinstance(model, Mapping)
    ]
    models.sort(key=lambda m: str(m.get("name", "")))
    gpu = report.get("gpu")
    if isinstance(gpu, Mapping):
        gpu = dict(gpu)
        free = gpu.get("freeBytes")
        if isinstance(free, int | float):
            gpu["freeBytes"] = round(free / FREE_BYTES_QUANTUM)
    return {"models": models, "gpu": gpu}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def changes(old: Report | None, new: Report) -> list[str]:
    """Human-readable differences that matter between two reports (empty: nothing worth publishing)."""
    if old is None:
        return ["first report"]
    before, after = significant(old), significant(new)
    out: list[str] = []
    old_models = {str(m.get("name")): m for m in before["models"]}
    new_models = {str(m.get("name")): m for m in after["models"]}
    for name in sorted(old_models.keys() - new_models.keys()):
        out.append(f"{name}: gone")
    for name in sorted(new_models.keys() - old_models.keys()):
        out.append(f"{name}: new ({new_models[name].get('state')})")
    for name in sorted(old_models.keys() & new_models.keys()):
        _diff(name, old_models[name], new_models[name], out)
    _diff("gpu", before["gpu"], after["gpu"], out)
    return out


def _diff(path: str, a: Any, b: Any, out: list[str]) -> None:
    """Differences field by field inside objects (policy, gpu), as `path.field: old -> new`."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(a.keys() | b.keys()):
            _diff(f"{path}.{key}", a.get(key), b.get(key), out)
    elif a != b:
        out.append(f"{path}: {_short(a)} -> {_short(b)}")


class Coalescer:
    """At most one publication per `min_interval`, and always the latest report after a burst.

    The first change after a quiet period goes out at once (leading edge); changes inside the interval
    only replace the pending report, which goes out when the interval ends (trailing edge). A burst that
    ends where it started publishes nothing more: the annotation already says that. The timing is the
    operator's one Debouncer; this adds what counts as a change (`significant`).
    """

    def __init__(self, min_interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        if min_interval < 0:
            raise ValueError(f"min_interval must be >= 0 seconds, got {min_interval}")
        self.min_interval = min_interval
        self._timing = Debouncer(min_interval, leading=True, clock=clock)
        self._published: dict[str, Any] | None = None  # significant() of what the pod shows
        self._published_report: Report | None = None
        self._pending: Report | None = None

    @property
    def pending(self) -> Report | None:
        return self._pending

    @property
    def last_published(self) -> Report | None:
        return self._published_report

    def offer(self, report: Report) -> None:
        """The runtime's latest report; becomes pending when it differs from what is published."""
        if significant(report) == self._published:
            self._pending = None
            self._timing.cancel()
        else:
            self._pending = report
            self._timing.mark()

    def wait_time(self) -> float | None:
        """Seconds until the pending report may go out (0: now); None when nothing is pending."""
        return self._timing.wait_time()

    def due(self) -> Report | None:
        """The report to publish now, or None (nothing pending, or still inside the interval)."""
        return self._pending if self._timing.due() else None

    def published(self, report: Report) -> None:
        """Record that `report` is now on the pod."""
        self._published = significant(report)
        self._published_report = report
        self._timing.take()
        self._timing.ran()
        if self._pending is report or (
            self._pending is not None and significant(self._pending) == self._published
        ):
            self._pending = None
        elif self._pending is not None:  # something newer than what went out: due after the interval
            self._timing.mark()

    def failed(self, retry_in: float) -> None:
        """The publication failed: keep the report pending and try again after `retry_in` seconds."""
        self._timing.postpone(retry_in)

    def forget(self) -> None:
        """Publish the next report whatever it is (e.g. someone else overwrote the annotation)."""
        self._published = None
        self._published_report = None
