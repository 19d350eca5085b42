"""The per-user cache: one namespacing layer over interchangeable storage backends.

:class:`NamespacedUserCache` implements :class:`~data.api.UserCache` for one user by
prefixing every key with that user's namespace, ``ssot:cache:<quoted user id>:``. The
user id is percent-encoded so that it cannot contain the ``:`` separator: no user id and
key can ever spell another user's key. Storage is a :class:`CacheBackend`:

- :class:`MemoryCacheBackend` (the default): a bounded in-process LRU map with expiry;
- :class:`RedisCacheBackend`: ``redis.asyncio`` for caches shared by several processes.

Backend failures (Redis down, timeouts) become
:class:`~data.api.DataUnavailableError`; raw client exceptions never reach callers.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol
from urllib.parse import quote

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from data.api import (
    MAX_CACHE_KEY_LENGTH,
    MAX_CACHE_VALUE_BYTES,
    DataUnavailableError,
    InvalidInputError,
)
from data.engine import safe_url
from data.validation import check_text

__all__ = [
    "MAX_TTL_SECONDS",
    "CacheBackend",
    "MemoryCacheBackend",
    "NamespacedUserCache",
    "RedisCacheBackend",
    "cache_backend_from_url",
    "user_namespace",
]

log = structlog.get_logger(__name__)

MAX_TTL_SECONDS = 30 * 24 * 3600.0
_NAMESPACE_ROOT = "ssot:cache:"
_SCAN_BATCH = 500


def user_namespace(user_id: str) -> str:
    """The key prefix of one user's entries."""
    return f"{_NAMESPACE_ROOT}{quote(user_id, safe='')}:"


class CacheBackend(Protocol):
    """Raw key/value storage with expiry; keys arrive already namespaced."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, ttl_seconds: float | None) -> None: ...

    async def delete(self, key: str) -> bool: ...

    async def exists(self, key: str) -> bool: ...

    async def ttl(self, key: str) -> float | None: ...

    async def keys_with_prefix(self, prefix: str) -> list[str]: ...

    async def delete_prefix(self, prefix: str) -> int: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class MemoryCacheBackend:
    """In-process storage: LRU-bounded to ``max_entries``, expired entries dropped lazily.

    ``clock`` (monotonic seconds) is replaceable so tests can move time.
    """

    def __init__(
        self, *, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._entries: OrderedDict[str, tuple[str, float | None]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def __len__(self) -> int:
        self._purge_expired()
        return len(self._entries)

    def _live(self, key: str) -> tuple[str, float | None] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= self._clock():
            del self._entries[key]
            return None
        return entry

    def _purge_expired(self) -> None:
        now = self._clock()
        expired = [k for k, (_, at) in self._entries.items() if at is not None and at <= now]
        for key in expired:
            del self._entries[key]

    async def get(self, key: str) -> str | None:
        entry = self._live(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    async def set(self, key: str, value: str, ttl_seconds: float | None) -> None:
        expires = None if ttl_seconds is None else self._clock() + ttl_seconds
        self._entries[key] = (value, expires)
        self._entries.move_to_end(key)
        if len(self._entries) > self._max_entries:
            self._purge_expired()
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    async def delete(self, key: str) -> bool:
        return self._live(key) is not None and self._entries.pop(key, None) is not None

    async def exists(self, key: str) -> bool:
        return self._live(key) is not None

    async def ttl(self, key: str) -> float | None:
        entry = self._live(key)
        if entry is None or entry[1] is None:
            return None
        return max(0.0, entry[1] - self._clock())

    async def keys_with_prefix(self, prefix: str) -> list[str]:
        self._purge_expired()
        return [key for key in self._entries if key.startswith(prefix)]

    async def delete_prefix(self, prefix: str) -> int:
        keys = await self.keys_with_prefix(prefix)
        for key in keys:
            del self._entries[key]
        return len(keys)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + char if char in "*?[]\\^-" else char for char in text)


@asynccontextmanager
async def _redis_errors() -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as error:
        log.warning("data.cache_backend_error", error_type=type(error).__name__)
        raise DataUnavailableError("the cache is unavailable") from error


class RedisCacheBackend:
    """Storage in Redis (``redis.asyncio``); values are UTF-8 strings."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 5.0) -> RedisCacheBackend:
        client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            health_check_interval=30,
        )
        log.info("data.cache_redis", url=safe_url(url))
        return cls(client)

    async def get(self, key: str) -> str | None:
        async with _redis_errors():
            value = await self._client.get(key)
        return value if isinstance(value, str) else None

    async def set(self, key: str, value: str, ttl_seconds: float | None) -> None:
        async with _redis_errors():
            if ttl_seconds is None:
                await self._client.set(key, value)
            else:
                await self._client.set(key, value, px=max(1, math.ceil(ttl_seconds * 1000)))

    async def delete(self, key: str) -> bool:
        async with _redis_errors():
            return bool(await self._client.delete(key))

    async def exists(self, key: str) -> bool:
        async with _redis_errors():
            return bool(await self._client.exists(key))

    async def ttl(self, key: str) -> float | None:
        async with _redis_errors():
            millis = int(await self._client.pttl(key))
        return None if millis < 0 else millis / 1000.0

    async def keys_with_prefix(self, prefix: str) -> list[str]:
        pattern = _glob_escape(prefix) + "*"
        async with _redis_errors():
            return [key async for key in self._client.scan_iter(match=pattern, count=_SCAN_BATCH)]

    async def delete_prefix(self, prefix: str) -> int:
        keys = await self.keys_with_prefix(prefix)
        deleted = 0
        async with _redis_errors():
            for start in range(0, len(keys), _SCAN_BATCH):
                deleted += int(await self._client.unlink(*keys[start : start + _SCAN_BATCH]))
        return deleted

    async def ping(self) -> None:
        async with _redis_errors():
            await self._client.ping()

    async def close(self) -> None:
        async with _redis_errors():
            await self._client.aclose()


def cache_backend_from_url(url: str | None) -> CacheBackend:
    """``None`` or ``memory://`` → in-memory; ``redis://``, ``rediss://``, ``unix://`` → Redis."""
    if url is None or url == "memory://":
        return MemoryCacheBackend()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisCacheBackend.from_url(url)
    raise InvalidInputError("unsupported cache URL (use memory:// or redis://)")


class NamespacedUserCache:
    """One user's view of a cache backend (implements :class:`~data.api.UserCache`)."""

    def __init__(self, backend: CacheBackend, user_id: str) -> None:
        self._backend = backend
        self._prefix = user_namespace(user_id)

    def _key(self, key: str) -> str:
        return self._prefix + check_text(key, "key", MAX_CACHE_KEY_LENGTH, allow_empty=False)

    async def get(self, key: str) -> str | None:
        return await self._backend.get(self._key(key))

    async def set(self, key: str, value: str, *, ttl_seconds: float | None = None) -> None:
        full_key = self._key(key)
        if not isinstance(value, str):
            raise InvalidInputError("a cache value must be a string")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidInputError("a cache value must be valid Unicode text") from None
        if size > MAX_CACHE_VALUE_BYTES:
            raise InvalidInputError(f"a cache value may be at most {MAX_CACHE_VALUE_BYTES} bytes")
        if ttl_seconds is not None:
            if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int | float):
                raise InvalidInputError("ttl_seconds must be a number")
            if not math.isfinite(ttl_seconds) or not 0 < ttl_seconds <= MAX_TTL_SECONDS:
                raise InvalidInputError(f"ttl_seconds must be in (0, {MAX_TTL_SECONDS:.0f}]")
        await self._backend.set(
            full_key, value, None if ttl_seconds is None else float(ttl_seconds)
        )

    async def delete(self, key: str) -> bool:
        return await self._backend.delete(self._key(key))

    async def exists(self, key: str) -> bool:
        return await self._backend.exists(self._key(key))

    async def ttl(self, key: str) -> float | None:
        return await self._backend.ttl(self._key(key))

    async def keys(self, prefix: str = "") -> Sequence[str]:
        if prefix:
            prefix = check_text(prefix, "prefix", MAX_CACHE_KEY_LENGTH)
        found = await self._backend.keys_with_prefix(self._prefix + prefix)
        return sorted(key[len(self._prefix) :] for key in found)

    async def clear(self) -> int:
        return await self._backend.delete_prefix(self._prefix)
