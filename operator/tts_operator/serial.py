"""One holder at a time per key: a TTSService's reconciles never overlap, whichever path starts them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass
class _Turn:
    lock: asyncio.Lock
    users: int  # holding or waiting


class Serial(Generic[K]):
    """Per key, one `turn` at a time, in the order asked; a key's lock lives only while someone holds or
    awaits it (the operator meets every TTSService, most of them idle)."""

    def __init__(self) -> None:
        self._turns: dict[K, _Turn] = {}

    @contextlib.asynccontextmanager
    async def turn(self, key: K) -> AsyncIterator[None]:
        entry = self._turns.setdefault(key, _Turn(asyncio.Lock(), 0))
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._turns[key]

    def waiting(self, key: K) -> int:
        """How many wait for their turn of `key` (not counting the one holding it)."""
        entry = self._turns.get(key)
        if entry is None:
            return 0
        return entry.users - (1 if entry.lock.locked() else 0)

    def __len__(self) -> int:
        return len(self._turns)
