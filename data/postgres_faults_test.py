"""PostgreSQL going away mid-test: typed UNAVAILABLE errors, recovery, no lost commits.

Always runs against a PostgreSQL server of this module's own (it is stopped and
restarted here, so it is not the shared one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from context import UserExecutionContext, new_user_id
from data import (
    DataUnavailableError,
    MessageRole,
    SqlDataAccessFactory,
    TransactionAbortedError,
)
from data.engine import create_data_engine
from data.migrate import upgrade_schema
from itests.harness.postgres import PostgresDatabase, PostgresServer


@pytest.fixture
async def database(private_postgres_server: PostgresServer) -> AsyncIterator[PostgresDatabase]:
    server = private_postgres_server
    if not server.running:
        server.restart()
    created = server.create_database()
    await upgrade_schema(created.sqlalchemy_url("owner"), app_role=server.app.name)
    try:
        yield created
    finally:
        if not server.running:
            server.restart()
        created.drop()


@pytest.fixture
async def factory(database: PostgresDatabase) -> AsyncIterator[SqlDataAccessFactory]:
    instance = SqlDataAccessFactory(create_data_engine(database.sqlalchemy_url("app")))
    try:
        yield instance
    finally:
        await instance.shutdown()


def user() -> UserExecutionContext:
    return UserExecutionContext.from_request(new_user_id())


@pytest.mark.parametrize("stop_mode", ["immediate", "fast"])
async def test_database_down_gives_unavailable_and_recovery_keeps_commits(
    factory: SqlDataAccessFactory, database: PostgresDatabase, stop_mode: str
) -> None:
    server = database.server
    alice = user()
    async with factory.create_user_context(alice) as scope:
        thread = await scope.threads.create(title="survives")
        committed = [
            await scope.messages.append(thread.id, role=MessageRole.USER, content=f"m{i}")
            for i in range(5)
        ]
        note = await scope.notes.add("committed note")

    # A scope that is in the middle of its work when the server goes away.
    entry = factory.create_user_context(alice)
    in_flight = await entry.__aenter__()
    await in_flight.notes.list()
    await in_flight.notes.add("never committed")

    server.stop("immediate" if stop_mode == "immediate" else "fast")

    with pytest.raises(DataUnavailableError) as raised:
        await in_flight.notes.list()
    assert raised.value.grpc_status_name == "UNAVAILABLE"
    # Its uncommitted write is gone with the connection; the scope says so until
    # the caller acknowledges the loss.
    with pytest.raises(TransactionAbortedError):
        await in_flight.notes.add("after the loss")
    with pytest.raises(TransactionAbortedError):
        await entry.__aexit__(None, None, None)

    # New scopes fail the same typed way while the server is down: reads and writes.
    for attempt in range(3):
        async with factory.create_user_context(alice) as scope:
            with pytest.raises(DataUnavailableError):
                await scope.threads.list()
            with pytest.raises(DataUnavailableError):
                await scope.notes.add(f"while down {attempt}")
    assert factory.stats().live_scopes == 0
    assert factory.stats().connections_checked_out == 0

    server.restart()

    async with factory.create_user_context(alice) as scope:
        assert await scope.messages.list(thread.id) == committed
        assert [n.id for n in await scope.notes.list()] == [note.id]
        await scope.notes.add("after restart")
    async with factory.create_user_context(alice) as scope:
        contents = sorted(n.content for n in await scope.notes.list())
    assert contents == ["after restart", "committed note"]


async def test_commit_failing_at_scope_exit_is_reported(
    factory: SqlDataAccessFactory, database: PostgresDatabase
) -> None:
    alice = user()
    with pytest.raises(DataUnavailableError):
        async with factory.create_user_context(alice) as scope:
            await scope.notes.add("pending at the crash")
            database.server.stop("immediate")
    database.server.restart()
    async with factory.create_user_context(alice) as scope:
        assert await scope.notes.list() == []


async def test_unreachable_server_at_first_use_is_unavailable(database: PostgresDatabase) -> None:
    server = database.server
    server.stop("fast")
    try:
        factory = SqlDataAccessFactory(
            create_data_engine(database.sqlalchemy_url("app"), connect_timeout=2)
        )
        try:
            async with factory.create_user_context(user()) as scope:
                with pytest.raises(DataUnavailableError):
                    await scope.threads.list()
        finally:
            await factory.shutdown()
        with pytest.raises(DataUnavailableError):
            await upgrade_schema(database.sqlalchemy_url("owner"))
    finally:
        server.restart()


async def test_wrong_password_is_unavailable_not_a_raw_driver_error(
    database: PostgresDatabase,
) -> None:
    url = database.sqlalchemy_url("app").replace(database.server.app.password, "wrong")
    factory = SqlDataAccessFactory(create_data_engine(url))
    try:
        async with factory.create_user_context(user()) as scope:
            with pytest.raises(DataUnavailableError) as raised:
                await scope.notes.list()
            assert "wrong" not in str(raised.value)
    finally:
        await factory.shutdown()
