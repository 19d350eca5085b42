"""The response cache: completions keyed by (user, configuration, full request hash).

Isolation is structural: a :class:`CacheKey` always names its user, the manager only ever
builds keys with its own context's ``user_id``, and the store keeps each user's entries
apart (with a per-user entry limit, so one user cannot evict everyone else's answers).
Two users sending the identical prompt therefore get two separate entries; neither can
ever be served the other's completion.

:class:`ResponseCacheStore` is the seam for a shared store (Redis: one hash per user, the
completion as JSON, ``EXPIRE`` for the TTL); :class:`InMemoryResponseCache` is the
embedded default, with a TTL and least-recently-used eviction.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from dispatch.llm.api import Completion
from dispatch.llm.clock import Clock, SystemClock

__all__ = ["CacheKey", "InMemoryResponseCache", "ResponseCacheStore", "request_digest"]


@dataclass(frozen=True, slots=True)
class CacheKey:
    user_id: str
    config: str
    digest: str


def request_digest(payload: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of everything that shapes an answer."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@runtime_checkable
class ResponseCacheStore(Protocol):
    async def get(self, key: CacheKey) -> Completion | None:
        """The live entry for ``key``, or ``None`` (missing or expired)."""
        ...

    async def put(self, key: CacheKey, completion: Completion) -> None: ...

    async def delete(self, key: CacheKey) -> None: ...

    async def clear_user(self, user_id: str) -> int:
        """Drop every entry of ``user_id``; return how many there were."""
        ...

    async def count_user(self, user_id: str) -> int: ...


@dataclass(slots=True)
class _Entry:
    completion: Completion
    expires_at: float


class InMemoryResponseCache:
    """Process-local store. ``max_entries`` bounds the whole cache (oldest entry overall is
    evicted), ``max_entries_per_user`` each user's share (that user's oldest is evicted)."""

    def __init__(
        self,
        *,
        ttl_seconds: float = 600.0,
        max_entries: int = 10_000,
        max_entries_per_user: int = 500,
        clock: Clock | None = None,
    ) -> None:
        if ttl_seconds <= 0 or max_entries < 1 or max_entries_per_user < 1:
            raise ValueError("cache TTL and sizes must be positive")
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._max_per_user = max_entries_per_user
        self._clock: Clock = clock or SystemClock()
        self._users: dict[str, OrderedDict[tuple[str, str], _Entry]] = {}
        self._order: OrderedDict[CacheKey, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def _remove(self, key: CacheKey) -> None:
        entries = self._users.get(key.user_id)
        if entries is not None:
            entries.pop((key.config, key.digest), None)
            if not entries:
                del self._users[key.user_id]
        self._order.pop(key, None)

    async def get(self, key: CacheKey) -> Completion | None:
        entries = self._users.get(key.user_id)
        entry = None if entries is None else entries.get((key.config, key.digest))
        if entry is None:
            return None
        if entry.expires_at <= self._clock.monotonic():
            self._remove(key)
            return None
        assert entries is not None  # an entry was found in it
        entries.move_to_end((key.config, key.digest))
        self._order.move_to_end(key)
        return entry.completion

    async def put(self, key: CacheKey, completion: Completion) -> None:
        entries = self._users.setdefault(key.user_id, OrderedDict())
        slot = (key.config, key.digest)
        entries[slot] = _Entry(completion, self._clock.monotonic() + self._ttl)
        entries.move_to_end(slot)
        self._order[key] = None
        self._order.move_to_end(key)
        while len(entries) > self._max_per_user:
            (config, digest), _ = next(iter(entries.items()))
            self._remove(CacheKey(key.user_id, config, digest))
        while len(self._order) > self._max_entries:
            self._remove(next(iter(self._order)))

    async def delete(self, key: CacheKey) -> None:
        self._remove(key)

    async def clear_user(self, user_id: str) -> int:
        entries = self._users.pop(user_id, None)
        if entries is None:
            return 0
        for config, digest in entries:
            self._order.pop(CacheKey(user_id, config, digest), None)
        return len(entries)

    async def count_user(self, user_id: str) -> int:
        now = self._clock.monotonic()
        entries = self._users.get(user_id)
        if entries is None:
            return 0
        return sum(1 for entry in entries.values() if entry.expires_at > now)
