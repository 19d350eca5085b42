"""The per-user cache contract, on the selected cache backend (SSOT_TEST_CACHE_BACKEND).

Namespacing is exercised with hostile user ids and keys: nothing a user can choose may
reach another user's entries.
"""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from context import UserExecutionContext, new_user_id
from data import InvalidInputError, SqlDataAccessFactory
from data.api import MAX_CACHE_KEY_LENGTH, MAX_CACHE_VALUE_BYTES
from data.cache import CacheBackend, NamespacedUserCache, user_namespace


def cache_for(backend: CacheBackend, user_id: str) -> NamespacedUserCache:
    return NamespacedUserCache(backend, user_id)


async def test_set_get_delete_exists(cache_backend: CacheBackend) -> None:
    cache = cache_for(cache_backend, new_user_id())
    assert await cache.get("k") is None
    assert not await cache.exists("k")
    await cache.set("k", "välue ✓")
    assert await cache.get("k") == "välue ✓"
    assert await cache.exists("k")
    assert await cache.ttl("k") is None
    await cache.set("k", "replaced")
    assert await cache.get("k") == "replaced"
    assert await cache.delete("k")
    assert not await cache.delete("k")
    assert await cache.get("k") is None


async def test_ttl_is_kept(cache_backend: CacheBackend) -> None:
    cache = cache_for(cache_backend, new_user_id())
    await cache.set("short", "v", ttl_seconds=600)
    remaining = await cache.ttl("short")
    assert remaining is not None
    assert 590 < remaining <= 600
    assert await cache.ttl("missing") is None


async def test_keys_and_clear_see_only_own_entries(cache_backend: CacheBackend) -> None:
    alice, bob = cache_for(cache_backend, new_user_id()), cache_for(cache_backend, new_user_id())
    for key in ("b", "a", "prefix:1", "prefix:2"):
        await alice.set(key, "alice")
        await bob.set(key, "bob")
    assert await alice.keys() == ["a", "b", "prefix:1", "prefix:2"]
    assert await alice.keys("prefix:") == ["prefix:1", "prefix:2"]
    assert await alice.clear() == 4
    assert await alice.keys() == []
    assert await bob.keys() == ["a", "b", "prefix:1", "prefix:2"]
    assert await bob.get("a") == "bob"


@pytest.mark.parametrize(
    ("first_user", "first_key", "second_user", "second_key"),
    [
        ("usr_a:b", "c", "usr_a", "b:c"),  # the separator inside a user id
        ("usr_a", "x", "usr_a:", "x"),
        ("usr_a%3Ab", "c", "usr_a:b", "c"),  # the escaped form of the separator
        ("usr.a", "k", "usr_a", "k"),
    ],
)
async def test_crafted_user_ids_and_keys_never_collide(
    cache_backend: CacheBackend,
    first_user: str,
    first_key: str,
    second_user: str,
    second_key: str,
) -> None:
    first, second = cache_for(cache_backend, first_user), cache_for(cache_backend, second_user)
    assert user_namespace(first_user) != user_namespace(second_user)
    await first.set(first_key, "first")
    assert await second.get(second_key) is None
    assert await second.keys() == []
    await second.set(second_key, "second")
    assert await first.get(first_key) == "first"
    assert await second.clear() == 1
    assert await first.get(first_key) == "first"


@pytest.mark.parametrize("pattern", ["*", "?", "[a-z]", "\\", "*:*"])
async def test_glob_characters_are_literal(cache_backend: CacheBackend, pattern: str) -> None:
    alice, bob = cache_for(cache_backend, new_user_id()), cache_for(cache_backend, new_user_id())
    await bob.set("secret", "bob")
    await alice.set(f"{pattern}key", "alice")
    assert await alice.keys(pattern) == [f"{pattern}key"]
    assert await alice.keys("*") == ([f"{pattern}key"] if pattern.startswith("*") else [])
    assert await alice.clear() == 1
    assert await bob.get("secret") == "bob"


@pytest.mark.parametrize(
    ("key", "value", "ttl"),
    [
        ("", "v", None),
        ("k" * (MAX_CACHE_KEY_LENGTH + 1), "v", None),
        ("nul\x00", "v", None),
        ("k", "x" * (MAX_CACHE_VALUE_BYTES + 1), None),
        ("k", cast(str, b"bytes"), None),
        ("k", "v", 0),
        ("k", "v", -1),
        ("k", "v", float("nan")),
        ("k", "v", 10**9),
    ],
)
async def test_bad_input_is_refused(
    cache_backend: CacheBackend, key: str, value: str, ttl: float | None
) -> None:
    cache = cache_for(cache_backend, new_user_id())
    with pytest.raises(InvalidInputError):
        await cache.set(key, value, ttl_seconds=ttl)
    assert await cache.keys() == []


async def test_scope_cache_is_the_users_cache(
    factory: SqlDataAccessFactory, cache_backend: CacheBackend
) -> None:
    alice = UserExecutionContext.from_request(new_user_id())
    bob = UserExecutionContext.from_request(new_user_id())
    async with factory.create_user_context(alice) as scope:
        await scope.cache.set("greeting", "hello alice")
    # Another scope of the same user (a child context too) sees it; another user does not.
    async with factory.create_user_context(alice.create_child_context("tool")) as scope:
        assert await scope.cache.get("greeting") == "hello alice"
    async with factory.create_user_context(bob) as scope:
        assert await scope.cache.get("greeting") is None
        assert await scope.cache.keys() == []
    assert await cache_backend.keys_with_prefix(user_namespace(alice.user_id)) == [
        user_namespace(alice.user_id) + "greeting"
    ]


async def test_many_users_concurrently(cache_backend: CacheBackend) -> None:
    users = [new_user_id() for _ in range(30)]

    async def work(user_id: str) -> None:
        cache = cache_for(cache_backend, user_id)
        for i in range(10):
            await cache.set(f"k{i}", f"{user_id}:{i}")
            await asyncio.sleep(0)
        for i in range(10):
            assert await cache.get(f"k{i}") == f"{user_id}:{i}"
        assert await cache.keys() == sorted(f"k{i}" for i in range(10))

    await asyncio.gather(*(work(u) for u in users))
