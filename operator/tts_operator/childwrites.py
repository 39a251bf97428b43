"""What the operator last wrote of each child (the API server's answer), until its watch shows that."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tts_operator.written import includes

Manifest = dict[str, Any]
ChildKey = tuple[str, str, str]  # (kind, namespace, name)


def _version(body: Manifest | None) -> str:
    return str(((body or {}).get("metadata") or {}).get("resourceVersion") or "")


@dataclass
class _Entry:
    body: Manifest
    at: float


class ChildWrites:
    """Per child: the object as the operator's last create or patch of it left it (its compared part).

    The level check compares children with kopf's index, which lags behind the operator's own writes: a
    child created a moment ago is not in it yet, and without this the next reconcile of its service would
    POST it again (answered 409 AlreadyExists) or patch it again. An entry stands for the child until the
    index shows it at that version or later, until the child's deletion is seen (`forget`), or for `ttl`
    (a watch that never shows it: the reconcile then finds out from the API server); at most `max_children`
    are kept."""

    def __init__(
        self, ttl: float = 60.0, max_children: int = 8192, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_children = max_children
        self._clock = clock
        self._children: OrderedDict[ChildKey, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._children)

    @staticmethod
    def key(body: Manifest) -> ChildKey:
        meta = body.get("metadata") or {}
        return (str(body.get("kind") or ""), str(meta.get("namespace") or ""), str(meta.get("name") or ""))

    def wrote(self, body: Manifest) -> None:
        """Record the API server's answer to a create or patch of a child (its compared part)."""
        now = self._clock()
        key = self.key(body)
        self._children[key] = _Entry(body, now)
        self._children.move_to_end(key)
        while self._children and (
            len(self._children) > self.max_children or now - next(iter(self._children.values())).at > self.ttl
        ):
            self._children.popitem(last=False)

    def forget(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """The child was deleted (only the object `uid`, when given): what the watch shows is what exists."""
        entry = self._children.get((kind, namespace, name))
        if entry is not None and (uid is None or (entry.body.get("metadata") or {}).get("uid") == uid):
            del self._children[(kind, namespace, name)]

    def current(self, kind: str, namespace: str, name: str, watched: Manifest | None) -> Manifest | None:
        """The child as it is on the API server: what the watch shows (`watched`, None: not there), unless
        the operator wrote a later version of it that the watch does not show yet."""
        key = (kind, namespace, name)
        entry = self._children.get(key)
        if entry is None:
            return watched
        if self._clock() - entry.at > self.ttl or (
            watched is not None and includes(_version(watched), _version(entry.body))
        ):
            del self._children[key]
            return watched
        return entry.body
