"""Row-level security on PostgreSQL: the database itself confines each scope to its user.

These tests always run against PostgreSQL (a hermetic server, see conftest): they prove
what the repositories' own filters cannot, that even raw SQL inside user A's scope can
neither see nor change user B's rows.
"""

# The SQL below interpolates table names from the schema's own USER_TABLES constant.
# ruff: noqa: S608

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from context import UserExecutionContext, new_user_id
from data import DataAccessDeniedError, InvalidInputError, MessageRole, SqlDataAccessFactory
from data.engine import create_data_engine
from data.schema import USER_TABLES
from itests.harness.postgres import PostgresDatabase


def user() -> UserExecutionContext:
    return UserExecutionContext.from_request(new_user_id())


@pytest.fixture
async def pg_factory(
    migrated_postgres_database: PostgresDatabase,
) -> AsyncIterator[SqlDataAccessFactory]:
    factory = SqlDataAccessFactory(
        create_data_engine(migrated_postgres_database.sqlalchemy_url("app"))
    )
    try:
        yield factory
    finally:
        await factory.shutdown()


async def _seed(factory: SqlDataAccessFactory, ctx: UserExecutionContext) -> dict[str, set[str]]:
    """One row in every user table; returns the IDs by table."""
    async with factory.create_user_context(ctx) as scope:
        thread = await scope.threads.create(title="secret thread")
        message = await scope.messages.append(thread.id, role=MessageRole.USER, content="secret")
        run = await scope.runs.create(thread_id=thread.id, agent_name="a")
        event = await scope.run_events.append(run.id, seq=1, event_type="agent_started")
        note = await scope.notes.add("secret note")
        usage = await scope.tool_usage.record(tool_name="t", success=True, duration_ms=1)
    return {
        "threads": {thread.id},
        "messages": {message.id},
        "runs": {run.id},
        "run_events": {event.id},
        "notes": {note.id},
        "tool_usage": {usage.id},
    }


async def test_seed_covers_every_user_table(pg_factory: SqlDataAccessFactory) -> None:
    assert set((await _seed(pg_factory, user())).keys()) == set(USER_TABLES)


@pytest.mark.parametrize("table", USER_TABLES)
async def test_raw_select_sees_only_own_rows(pg_factory: SqlDataAccessFactory, table: str) -> None:
    alice, bob = user(), user()
    mine = await _seed(pg_factory, alice)
    theirs = await _seed(pg_factory, bob)
    async with pg_factory.create_user_context(alice) as scope:
        everything = await scope.execute_sql(f"SELECT user_id, id FROM {table}")
        assert {row["user_id"] for row in everything.rows} == {alice.user_id}
        assert {row["id"] for row in everything.rows} == mine[table]
        asked_for_bob = await scope.execute_sql(
            f"SELECT id FROM {table} WHERE user_id = :bob",
            {"bob": bob.user_id},
        )
        assert asked_for_bob.rows == []
        by_id = await scope.execute_sql(
            f"SELECT id FROM {table} WHERE id = :id",
            {"id": next(iter(theirs[table]))},
        )
        assert by_id.rows == []


@pytest.mark.parametrize("table", USER_TABLES)
async def test_raw_update_and_delete_of_other_rows_affect_nothing(
    pg_factory: SqlDataAccessFactory, table: str
) -> None:
    alice, bob = user(), user()
    await _seed(pg_factory, alice)
    theirs = await _seed(pg_factory, bob)
    async with pg_factory.create_user_context(alice) as scope:
        updated = await scope.execute_sql(
            f"UPDATE {table} SET user_id = :alice WHERE user_id = :bob",
            {"alice": alice.user_id, "bob": bob.user_id},
        )
        assert updated.rowcount == 0
        touched_all = await scope.execute_sql(f"UPDATE {table} SET id = id")
        assert touched_all.rowcount == 1  # its own row only
        deleted = await scope.execute_sql(
            f"DELETE FROM {table} WHERE user_id = :bob",
            {"bob": bob.user_id},
        )
        assert deleted.rowcount == 0
    async with pg_factory.create_user_context(bob) as scope:
        still = await scope.execute_sql(f"SELECT id FROM {table}")
        assert {row["id"] for row in still.rows} == theirs[table]


async def test_insert_claiming_another_user_is_refused(pg_factory: SqlDataAccessFactory) -> None:
    alice, bob = user(), user()
    async with pg_factory.create_user_context(alice) as scope:
        note = await scope.notes.add("mine")
        with pytest.raises(DataAccessDeniedError) as raised:
            await scope.execute_sql(
                "INSERT INTO notes (user_id, id, title, content, tags, search_text, created_at,"
                " updated_at) VALUES (:bob, 'note_forged', '', 'forged', '[]', 'forged',"
                " now(), now())",
                {"bob": bob.user_id},
            )
        assert raised.value.grpc_status_name == "PERMISSION_DENIED"
        with pytest.raises(DataAccessDeniedError):
            await scope.execute_sql(
                "UPDATE notes SET user_id = :bob WHERE id = :id",
                {"bob": bob.user_id, "id": note.id},
            )
        # Refused statements were undone alone; the unit of work goes on and commits.
        await scope.notes.add("still works")
    async with pg_factory.create_user_context(bob) as scope:
        assert await scope.notes.list() == []
    async with pg_factory.create_user_context(alice) as scope:
        assert sorted(n.content for n in await scope.notes.list()) == ["mine", "still works"]


async def test_without_the_user_setting_nothing_is_visible_or_writable(
    pg_factory: SqlDataAccessFactory, migrated_postgres_database: PostgresDatabase
) -> None:
    alice = user()
    await _seed(pg_factory, alice)
    for role in ("app", "owner"):
        engine = create_data_engine(migrated_postgres_database.sqlalchemy_url(role))
        try:
            async with engine.connect() as conn:
                for table in USER_TABLES:
                    count = await conn.scalar(text(f"SELECT count(*) FROM {table}"))
                    assert count == 0, (role, table)
                setting = await conn.scalar(text("SELECT current_setting('ssot.user_id', true)"))
                assert not setting
        finally:
            await engine.dispose()


async def test_user_setting_does_not_outlive_the_transaction(
    migrated_postgres_database: PostgresDatabase,
) -> None:
    # One pooled connection shared by two users in turn: the second transaction starts
    # with no user at all, so a scope's identity can never leak through the pool.
    engine = create_data_engine(
        migrated_postgres_database.sqlalchemy_url("app"), pool_size=1, max_overflow=0
    )
    factory = SqlDataAccessFactory(engine)
    try:
        alice = user()
        async with factory.create_user_context(alice) as scope:
            await scope.notes.add("a")
            row = await scope.execute_sql("SELECT current_setting('ssot.user_id', true) AS u")
            assert row.rows == [{"u": alice.user_id}]
            backend_pid = (await scope.execute_sql("SELECT pg_backend_pid() AS p")).rows[0]["p"]
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT pg_backend_pid()")) == backend_pid
            assert not await conn.scalar(text("SELECT current_setting('ssot.user_id', true)"))
            assert await conn.scalar(text("SELECT count(*) FROM notes")) == 0
    finally:
        await factory.shutdown()


async def test_roles_and_policies_are_as_designed(
    migrated_postgres_database: PostgresDatabase,
) -> None:
    server = migrated_postgres_database.server
    engine = create_data_engine(migrated_postgres_database.sqlalchemy_url("owner"))
    try:
        async with engine.connect() as conn:
            role = (
                await conn.execute(
                    text(
                        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb "
                        "FROM pg_roles WHERE rolname = :r"
                    ),
                    {"r": server.app.name},
                )
            ).one()
            assert tuple(role) == (False, False, False, False)
            tables = (
                await conn.execute(
                    text(
                        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
                        "pg_get_userbyid(c.relowner) FROM pg_class c "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = 'public' AND c.relkind = 'r' "
                        "AND c.relname = ANY(:tables)"
                    ),
                    {"tables": list(USER_TABLES)},
                )
            ).all()
            assert {t[0] for t in tables} == set(USER_TABLES)
            for name, enabled, forced, owner in tables:
                assert enabled and forced, name
                assert owner == server.owner.name != server.app.name
            policies = (
                await conn.execute(
                    text(
                        "SELECT tablename, qual, with_check FROM pg_policies "
                        "WHERE schemaname = 'public'"
                    )
                )
            ).all()
            assert {p[0] for p in policies} == set(USER_TABLES)
            for _, using, check in policies:
                assert "current_setting('ssot.user_id'" in using
                assert "current_setting('ssot.user_id'" in check
    finally:
        await engine.dispose()


async def test_app_role_cannot_change_the_schema_or_policies(
    migrated_postgres_database: PostgresDatabase,
) -> None:
    engine = create_data_engine(migrated_postgres_database.sqlalchemy_url("app"))
    try:
        for statement in (
            "ALTER TABLE notes DISABLE ROW LEVEL SECURITY",
            "DROP POLICY user_isolation ON notes",
            "CREATE TABLE sneaky (id int)",
            "SET row_security = off; SELECT count(*) FROM notes",
        ):
            async with engine.connect() as conn:
                with pytest.raises(DBAPIError) as raised:
                    for part in statement.split("; "):
                        await conn.execute(text(part))
                # insufficient_privilege: not the owner, no CREATE, or "query would be
                # affected by row-level security policy" with row_security off.
                assert getattr(raised.value.orig, "sqlstate", None) == "42501", statement
    finally:
        await engine.dispose()


async def test_message_cannot_point_at_another_users_thread_even_in_raw_sql(
    pg_factory: SqlDataAccessFactory,
) -> None:
    alice, bob = user(), user()
    theirs = await _seed(pg_factory, bob)
    async with pg_factory.create_user_context(alice) as scope:
        # The composite foreign key (user_id, thread_id) finds no such thread of alice's.
        with pytest.raises(InvalidInputError):
            await scope.execute_sql(
                "INSERT INTO messages (user_id, id, thread_id, role, content, metadata, "
                "created_at) VALUES (:alice, 'msg_x', :thread, 'user', 'x', '{}', now())",
                {"alice": alice.user_id, "thread": next(iter(theirs["threads"]))},
            )
