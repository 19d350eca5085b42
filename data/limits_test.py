"""Per-user scope limits, TTL reclaim of leaked scopes, stats and a clean shutdown.

Runs on the selected database backend (see conftest).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from context import UserExecutionContext, new_user_id
from data import (
    FactoryClosedError,
    ScopeClosedError,
    ScopeLimitExceededError,
    SqlDataAccessFactory,
)
from data.cache import MemoryCacheBackend
from data.conftest import DataDatabase
from data.engine import create_data_engine
from data.scope import CloseReason, SqlUserDataScope
from itests.harness import wait_until


def user() -> UserExecutionContext:
    return UserExecutionContext.from_request(new_user_id())


@pytest.fixture
async def short_ttl_factory(data_database: DataDatabase) -> AsyncIterator[SqlDataAccessFactory]:
    instance = SqlDataAccessFactory(
        create_data_engine(data_database.app_url),
        scope_ttl_seconds=0.05,
        cleanup_interval_seconds=0.01,
    )
    try:
        yield instance
    finally:
        await instance.shutdown()


async def test_eleventh_live_scope_is_refused_while_other_users_go_on(
    factory: SqlDataAccessFactory,
) -> None:
    alice, bob = user(), user()
    async with AsyncExitStack() as stack:
        scopes = [
            await stack.enter_async_context(factory.create_user_context(alice)) for _ in range(10)
        ]
        with pytest.raises(ScopeLimitExceededError) as raised:
            await stack.enter_async_context(factory.create_user_context(alice))
        assert raised.value.grpc_status_name == "RESOURCE_EXHAUSTED"
        # Other users are unaffected, and alice's open scopes still work.
        async with factory.create_user_context(bob) as theirs:
            await theirs.notes.add("bob is fine")
        await scopes[0].notes.add("alice is fine too")
        stats = factory.stats()
        assert stats.scopes_per_user == {alice.user_id: 10}
        assert stats.scopes_rejected == 1
        assert stats.max_scopes_per_user == 10
    # Once one closes, alice may open another.
    async with factory.create_user_context(alice) as scope:
        notes = await scope.notes.list()
        assert [n.content for n in notes] == ["alice is fine too"]
    assert factory.stats().live_scopes == 0


async def test_child_contexts_count_against_the_same_user(factory: SqlDataAccessFactory) -> None:
    alice = user()
    async with AsyncExitStack() as stack:
        for i in range(10):
            child = alice.create_child_context(f"step{i}")
            await stack.enter_async_context(factory.create_user_context(child))
        with pytest.raises(ScopeLimitExceededError):
            await stack.enter_async_context(factory.create_user_context(alice))


async def test_leaked_scope_is_reclaimed_after_its_ttl(
    short_ttl_factory: SqlDataAccessFactory,
) -> None:
    factory = short_ttl_factory
    alice = user()
    leaked_entry = factory.create_user_context(alice)
    leaked = await leaked_entry.__aenter__()  # never exited: a leak
    await leaked.notes.add("never committed")
    assert isinstance(leaked, SqlUserDataScope)
    assert leaked.holds_connection
    assert factory.stats().connections_checked_out == 1

    await asyncio.wait_for(leaked.wait_closed(), timeout=10)

    assert leaked.close_reason is CloseReason.RECLAIMED
    stats = factory.stats()
    assert stats.scopes_reclaimed == 1
    assert stats.live_scopes == 0
    assert stats.connections_checked_out == 0
    with pytest.raises(ScopeClosedError):
        await leaked.notes.list()
    # Its owner learns at exit that the writes were lost.
    with pytest.raises(ScopeClosedError):
        await leaked_entry.__aexit__(None, None, None)
    async with factory.create_user_context(alice) as scope:
        assert await scope.notes.list() == []


async def test_active_scope_is_not_reclaimed(data_database: DataDatabase) -> None:
    now = [0.0]
    factory = SqlDataAccessFactory(
        create_data_engine(data_database.app_url),
        scope_ttl_seconds=10,
        cleanup_interval_seconds=3600,
        clock=lambda: now[0],
    )
    try:
        alice = user()
        async with factory.create_user_context(alice) as scope:
            now[0] = 9
            await scope.notes.list()  # activity resets the idle clock
            now[0] = 18
            assert await factory.reclaim_expired() == 0
            assert not scope.closed
            now[0] = 19.5
            assert await factory.reclaim_expired() == 1
            assert scope.closed
        # Nothing was written, so leaving the reclaimed scope is not an error.
    finally:
        await factory.shutdown()


async def test_limit_reclaims_the_users_expired_scopes_first(data_database: DataDatabase) -> None:
    now = [0.0]
    factory = SqlDataAccessFactory(
        create_data_engine(data_database.app_url),
        max_scopes_per_user=2,
        scope_ttl_seconds=10,
        cleanup_interval_seconds=3600,
        clock=lambda: now[0],
    )
    try:
        alice = user()
        stale = [await factory.create_user_context(alice).__aenter__() for _ in range(2)]
        with pytest.raises(ScopeLimitExceededError):
            await factory.create_user_context(alice).__aenter__()
        now[0] = 11
        async with factory.create_user_context(alice):
            assert all(scope.closed for scope in stale)
            assert factory.stats().scopes_reclaimed == 2
    finally:
        await factory.shutdown()


async def test_cleanup_task_starts_lazily(data_database: DataDatabase) -> None:
    factory = SqlDataAccessFactory(create_data_engine(data_database.app_url))
    try:
        assert not factory.stats().cleanup_task_running
        async with factory.create_user_context(user()):
            assert factory.stats().cleanup_task_running
    finally:
        await factory.shutdown()
    assert not factory.stats().cleanup_task_running


def test_factory_can_be_built_without_an_event_loop(tmp_path: object) -> None:
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    factory = SqlDataAccessFactory(create_data_engine("sqlite+aiosqlite:///unused.db"))
    assert factory.stats().live_scopes == 0
    asyncio.run(factory.shutdown())


async def test_stats_age_buckets(data_database: DataDatabase) -> None:
    now = [1000.0]
    factory = SqlDataAccessFactory(
        create_data_engine(data_database.app_url),
        scope_ttl_seconds=10 * 3600,
        cleanup_interval_seconds=3600,
        clock=lambda: now[0],
    )
    try:
        alice = user()
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(factory.create_user_context(alice))
            now[0] += 20 * 60
            await stack.enter_async_context(factory.create_user_context(alice))
            now[0] += 10 * 60
            await stack.enter_async_context(factory.create_user_context(alice))
            now[0] += 60
            stats = factory.stats()
            assert stats.scopes_by_age == {"0-5m": 1, "5-30m": 1, "30m-2h": 1, "2h+": 0}
            now[0] += 3 * 3600
            assert factory.stats().scopes_by_age == {"0-5m": 0, "5-30m": 0, "30m-2h": 0, "2h+": 3}
    finally:
        await factory.shutdown()


async def test_shutdown_closes_every_scope_and_connection(data_database: DataDatabase) -> None:
    cache = MemoryCacheBackend()
    factory = SqlDataAccessFactory(create_data_engine(data_database.app_url), cache=cache)
    users = [user() for _ in range(5)]
    scopes = [await factory.create_user_context(u).__aenter__() for u in users]
    # Each scope now holds a connection; one has uncommitted writes (SQLite allows one
    # writing transaction at a time, so only one writes).
    await scopes[0].notes.add("open work")
    for scope in scopes:
        await scope.notes.list()
        await scope.cache.set("k", "v")
    stats = factory.stats()
    assert stats.connections_checked_out == 5
    assert stats.connections_open >= 5
    database = data_database.postgres
    if database is not None:
        app_role = database.server.app.name
        assert database.server.connection_count("app", database.name) >= 5

    await factory.shutdown()

    assert all(scope.close_reason is CloseReason.SHUTDOWN for scope in scopes)
    assert not any(scope.holds_connection for scope in scopes)
    stats = factory.stats()
    assert stats.closed
    assert stats.live_scopes == 0
    assert stats.connections_checked_out == 0
    assert stats.connections_open == 0
    assert not stats.cleanup_task_running
    assert len(cache) == 0
    if database is not None:
        # Checked on the server itself: the application role has no session left.
        wait_until(
            lambda: database.server.connection_count("app", database.name) == 0,
            timeout=10,
            what="the application role's sessions to end",
        )
        assert app_role == "ssot_app"
    with pytest.raises(FactoryClosedError):
        factory.create_user_context(users[0])
    with pytest.raises(ScopeClosedError):
        await scopes[0].notes.list()
    await factory.shutdown()  # idempotent
