"""The in-memory cache backend's own mechanics: expiry by its clock, the LRU bound."""

from __future__ import annotations

import pytest

from data import InvalidInputError
from data.cache import MemoryCacheBackend, NamespacedUserCache, cache_backend_from_url


async def test_entries_expire_by_the_clock() -> None:
    now = [100.0]
    backend = MemoryCacheBackend(clock=lambda: now[0])
    cache = NamespacedUserCache(backend, "usr_a")
    await cache.set("k", "v", ttl_seconds=10)
    await cache.set("forever", "v")
    now[0] = 105
    assert await cache.ttl("k") == 5
    assert await cache.get("k") == "v"
    now[0] = 110
    assert await cache.get("k") is None
    assert not await cache.exists("k")
    assert await cache.keys() == ["forever"]
    assert len(backend) == 1


async def test_least_recently_used_entries_are_evicted_at_the_bound() -> None:
    backend = MemoryCacheBackend(max_entries=3)
    cache = NamespacedUserCache(backend, "usr_a")
    for key in ("a", "b", "c"):
        await cache.set(key, key)
    assert await cache.get("a") == "a"  # now the most recently used
    await cache.set("d", "d")
    assert await cache.keys() == ["a", "c", "d"]
    assert len(backend) == 3


def test_backend_from_url() -> None:
    assert isinstance(cache_backend_from_url(None), MemoryCacheBackend)
    assert isinstance(cache_backend_from_url("memory://"), MemoryCacheBackend)
    with pytest.raises(InvalidInputError):
        cache_backend_from_url("memcached://localhost")
    with pytest.raises(ValueError, match="positive"):
        MemoryCacheBackend(max_entries=0)
