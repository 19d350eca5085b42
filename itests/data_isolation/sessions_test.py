"""Database session management: units of work, per-user scope limits, leaked scopes,
PostgreSQL going away, and transaction isolation between users.

Units of work are in-process data scopes of the platform's factory (over gRPC every call
is its own unit of work), opened for contexts verified from the users' tokens; what each
user then sees is read through the composition under test, in process or over gRPC.
PostgreSQL scenarios use this module's own server (a fresh migrated database per test,
the services connecting as the non-owner ``app`` role); the others SQLite under tmp_path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from auth.api import AuthContextKind
from auth.service import LocalAuthService
from auth.testing import fast_settings
from context.api import UserExecutionContext
from data.api import (
    AlreadyExistsError,
    DataUnavailableError,
    MessageRole,
    ScopeClosedError,
    ScopeLimitExceededError,
)
from data.engine import create_data_engine
from data.factory import SqlDataAccessFactory
from data.migrate import upgrade_schema
from data.scope import CloseReason, SqlUserDataScope
from dispatch.agents.api import AgentUnavailableError, RunLimitExceededError, RunState
from itests.data_isolation.deployment import (
    Composition,
    UserSession,
    assert_idle,
    assert_mentions_none,
    composition,
    deployment,
    eventually,
    grpc_status_of,
    pg_database,
    pg_server,
    pg_template,
    postgres_settings,
)
from itests.harness import PostgresDatabase
from server.testing import settings_for_tests

THEME = "database session management"

__all__ = ["THEME", "composition", "pg_database", "pg_server", "pg_template"]


class _ToolCrashError(Exception):
    """What a unit of work's own code raises half-way (a crashed tool, say)."""


async def _visible(session: UserSession) -> tuple[list[str], list[str]]:
    """The thread titles and note contents ``session``'s user sees right now, read through
    the composition (a transaction of its own)."""
    async with await session.open() as scope:
        threads = sorted(t.title for t in await scope.threads.list())
        notes = sorted(n.content for n in await scope.notes.list())
    return threads, notes


async def _committed_counts(database: PostgresDatabase) -> dict[str, dict[str, int]]:
    """Committed rows per table and user, seen by the superuser (no row-level security)."""

    async def count(conn: AsyncConnection) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for table in ("threads", "notes", "messages"):
            rows = await conn.execute(
                text(f"SELECT user_id, count(*) FROM {table} GROUP BY 1")  # noqa: S608
            )
            found[table] = {str(user): int(n) for user, n in rows}
        return found

    return await asyncio.to_thread(database.server.run_admin, count, database.name)


async def test_a_failure_inside_a_scope_rolls_back_only_that_scope(
    composition: Composition, tmp_path: Path, pg_database: PostgresDatabase
) -> None:
    settings = postgres_settings(tmp_path, pg_database)
    async with deployment(composition, tmp_path, settings=settings) as dep:
        alice, bob = await dep.users("alice", "bob")
        all_written = asyncio.Barrier(4)
        closed: dict[str, SqlUserDataScope] = {}

        async def alice_fails() -> None:
            with pytest.raises(_ToolCrashError):
                async with alice.local_scope() as scope:
                    closed["alice-failed"] = scope
                    thread = await scope.threads.create(title="alice half-done")
                    await scope.messages.append(thread.id, role=MessageRole.USER, content="x")
                    await scope.notes.add("alice half-done note")
                    await all_written.wait()
                    raise _ToolCrashError("the tool crashed")

        async def alice_succeeds() -> None:
            async with alice.local_scope() as scope:
                closed["alice-kept"] = scope
                await scope.notes.add("alice kept note")
                await all_written.wait()

        async def bob_recovers_inside() -> None:
            async with bob.local_scope() as scope:
                closed["bob-recovered"] = scope
                thread = await scope.threads.create(title="bob thread")
                # A refused write is undone alone; the unit of work goes on and commits.
                with pytest.raises(AlreadyExistsError):
                    await scope.threads.create(title="bob again", thread_id=thread.id)
                await scope.notes.add("bob note after the refusal")
                await all_written.wait()

        async def bob_succeeds() -> None:
            async with bob.local_scope() as scope:
                closed["bob-kept"] = scope
                await scope.notes.add("bob kept note")
                await all_written.wait()

        await asyncio.gather(alice_fails(), alice_succeeds(), bob_recovers_inside(), bob_succeeds())

        assert closed["alice-failed"].close_reason is CloseReason.FAILED
        for name in ("alice-kept", "bob-recovered", "bob-kept"):
            assert closed[name].close_reason is CloseReason.EXITED
        (alice_threads, alice_notes), (bob_threads, bob_notes) = await asyncio.gather(
            _visible(alice), _visible(bob)
        )
        assert (alice_threads, alice_notes) == ([], ["alice kept note"])
        assert bob_threads == ["bob thread"]
        assert bob_notes == ["bob kept note", "bob note after the refusal"]
        counts = await _committed_counts(pg_database)
        assert counts["threads"] == {bob.user_id: 1}
        assert counts["messages"] == {}
        assert counts["notes"] == {alice.user_id: 1, bob.user_id: 2}
        assert_idle(dep.platform)


async def test_one_user_s_scope_limit_leaves_others_unaffected(
    composition: Composition, tmp_path: Path
) -> None:
    limit = 3
    settings = settings_for_tests(tmp_path, max_data_scopes_per_user=limit)
    async with deployment(composition, tmp_path, settings=settings) as dep:
        alice, bob = await dep.users("alice", "bob")
        data = dep.platform.internals.data
        async with AsyncExitStack() as held:
            # Alice's work in progress holds every scope she may have.
            alice_scopes = [
                await held.enter_async_context(alice.local_scope()) for _ in range(limit)
            ]
            assert data.stats().scopes_per_user == {alice.user_id: limit}
            rejected_before = data.stats().scopes_rejected

            async def alice_is_refused() -> list[Exception]:
                refusals: list[Exception] = []
                for _ in range(2):
                    with pytest.raises(ScopeLimitExceededError) as raised:
                        async with await alice.open() as scope:
                            await scope.notes.list()
                    refusals.append(raised.value)
                with pytest.raises(RunLimitExceededError) as run_refused:
                    await alice.start("remember that this will not run")
                refusals.append(run_refused.value)
                return refusals

            async def bob_works(index: int) -> str:
                async with await bob.open() as scope:
                    note = await scope.notes.add(f"bob note {index}")
                return note.content

            refusals, bob_notes = await asyncio.gather(
                alice_is_refused(),
                # Bob uses his whole allowance at once, while Alice is at hers.
                asyncio.gather(*(bob_works(i) for i in range(limit))),
            )
            bob_run, _ = await bob.run("remember that bob is unaffected")

            assert sorted(bob_notes) == [f"bob note {i}" for i in range(limit)]
            assert bob_run.state is RunState.COMPLETED
            for refusal in refusals:
                assert grpc_status_of(refusal) == "RESOURCE_EXHAUSTED"
                assert_mentions_none(refusal, "bob note", "bob is unaffected")
            assert data.stats().scopes_rejected - rejected_before == 3
            assert data.stats().scopes_per_user == {alice.user_id: limit}
            # Her held scopes still work; what she writes there commits on release.
            await alice_scopes[0].notes.add("alice finished her work")
        assert data.stats().scopes_per_user == {}
        async with await alice.open() as scope:
            assert [n.content for n in await scope.notes.list()] == ["alice finished her work"]
        _, bob_seen = await _visible(bob)
        assert "bob is unaffected" in bob_seen
        assert len(bob_seen) == limit + 1
        assert_idle(dep.platform)


@dataclass
class _ManualClock:
    """The data factory's monotonic clock, moved by the test."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def _auth_and_data(
    directory: Path, clock: _ManualClock
) -> AsyncIterator[tuple[LocalAuthService, SqlDataAccessFactory]]:
    """The auth service and a data factory with a short scope TTL, composed directly
    (the platform's settings do not expose the TTL or the clean-up interval)."""
    url = f"sqlite+aiosqlite:///{directory / 'data.db'}"
    await upgrade_schema(url)
    factory = SqlDataAccessFactory(
        create_data_engine(url),
        scope_ttl_seconds=60.0,
        cleanup_interval_seconds=0.01,
        write_lock_timeout_seconds=30.0,
        clock=clock,
    )
    try:
        async with await LocalAuthService.create(fast_settings(directory / "auth")) as auth:
            yield auth, factory
    finally:
        await factory.shutdown()


async def _verified_context(auth: LocalAuthService, name: str) -> UserExecutionContext:
    email = f"{name}@example.com"
    await auth.register(email, "correct-horse-battery")
    pair = await auth.login(email, "correct-horse-battery")
    verified = await auth.authenticate_token(pair.access_token, AuthContextKind.REST_API)
    assert verified.success and verified.user_id is not None
    return UserExecutionContext.from_request(verified.user_id)


async def test_a_leaked_scope_is_reclaimed_after_its_ttl(tmp_path: Path) -> None:
    clock = _ManualClock()
    async with _auth_and_data(tmp_path, clock) as (auth, factory):
        alice, bob = await asyncio.gather(
            _verified_context(auth, "alice"), _verified_context(auth, "bob")
        )
        # Alice's code enters a scope, writes, and never leaves it: a leak that holds a
        # connection and, on SQLite, the write lock.
        leaked_entry = factory.create_user_context(alice)
        leaked = await leaked_entry.__aenter__()
        await leaked.notes.add("alice never committed this")
        assert leaked.holds_connection

        bob_started = asyncio.Event()
        bob_scope: list[SqlUserDataScope] = []

        async def bob_writes() -> list[str]:
            async with factory.create_user_context(bob) as scope:
                bob_scope.append(scope)
                bob_started.set()
                await scope.notes.add("bob waited his turn")  # blocked by the leak
            async with factory.create_user_context(bob) as scope:
                return [n.content for n in await scope.notes.list()]

        bob_task = asyncio.create_task(bob_writes())
        await bob_started.wait()
        await eventually(lambda: bob_scope[0].busy)  # Bob is inside his write, waiting
        assert factory.stats().scopes_per_user == {alice.user_id: 1, bob.user_id: 1}

        clock.now = 61.0  # past the TTL: the idle leak expires, Bob's busy scope does not
        await asyncio.wait_for(leaked.wait_closed(), timeout=20)
        bob_notes = await asyncio.wait_for(bob_task, timeout=20)

        assert leaked.close_reason is CloseReason.RECLAIMED
        assert not bob_scope[0].closed or bob_scope[0].close_reason is CloseReason.EXITED
        assert bob_notes == ["bob waited his turn"]
        with pytest.raises(ScopeClosedError):
            await leaked.notes.list()
        with pytest.raises(ScopeClosedError):  # its owner learns the writes were lost
            await leaked_entry.__aexit__(None, None, None)
        async with factory.create_user_context(alice) as scope:
            assert await scope.notes.list() == []
            await scope.notes.add("alice starts again")
        stats = factory.stats()
        assert stats.scopes_reclaimed == 1
        assert stats.live_scopes == 0
        assert stats.scopes_per_user == {}
        assert stats.connections_checked_out == 0
        async with factory.create_user_context(bob) as scope:
            assert [n.content for n in await scope.notes.list()] == ["bob waited his turn"]
    assert factory.stats().closed
    assert factory.stats().connections_open == 0


async def test_postgresql_stopped_mid_run_gives_unavailable_and_committed_rows_survive_a_restart(
    composition: Composition, tmp_path: Path, pg_database: PostgresDatabase
) -> None:
    server = pg_database.server
    settings = postgres_settings(tmp_path, pg_database)
    async with deployment(composition, tmp_path, settings=settings) as dep:
        alice, bob = await dep.users("alice", "bob")

        async def commit(session: UserSession) -> str:
            info, _ = await session.run(f"remember that {session.name} committed this")
            assert info.state is RunState.COMPLETED
            async with await session.open() as scope:
                await scope.notes.add(f"{session.name} second note")
            return info.run_id

        runs = dict(
            zip(
                (alice.user_id, bob.user_id),
                await asyncio.gather(commit(alice), commit(bob)),
                strict=True,
            )
        )

        await asyncio.to_thread(server.stop, "immediate")
        try:

            async def while_down(session: UserSession) -> list[Exception]:
                refusals: list[Exception] = []
                for action in ("list", "add"):
                    with pytest.raises(DataUnavailableError) as raised:
                        async with await session.open() as scope:
                            if action == "list":
                                await scope.notes.list()
                            else:
                                await scope.notes.add("written while down")
                    refusals.append(raised.value)
                with pytest.raises(AgentUnavailableError) as run_refused:
                    await session.start("remember that the database is down")
                refusals.append(run_refused.value)
                return refusals

            down = await asyncio.gather(while_down(alice), while_down(bob))
            for refusals in down:
                for refusal in refusals:
                    assert grpc_status_of(refusal) == "UNAVAILABLE"
                    assert_mentions_none(
                        refusal, server.app.password, "committed this", "second note"
                    )
            # Nothing is held while the database is away: no scope, no slot, no run.
            assert_idle(dep.platform)
        finally:
            await asyncio.to_thread(server.restart)

        async def after(session: UserSession) -> tuple[list[str], RunState]:
            _, notes = await _visible(session)
            info = await session.agents.get_run(await session.caller(), runs[session.user_id])
            return notes, info.state

        recovered = await asyncio.gather(after(alice), after(bob))
        for session, (notes, state) in zip((alice, bob), recovered, strict=True):
            assert notes == sorted(
                [f"{session.name} committed this", f"{session.name} second note"]
            )
            assert state is RunState.COMPLETED
        # Both users work again, each on their own data.
        again = await asyncio.gather(
            alice.run("remember that alice is back"), bob.run("remember that bob is back")
        )
        assert [info.state for info, _ in again] == [RunState.COMPLETED] * 2
        _, alice_notes = await _visible(alice)
        assert "alice is back" in alice_notes
        assert not any("bob" in note for note in alice_notes)
        assert_idle(dep.platform)


async def test_concurrent_transactions_of_two_users_do_not_see_each_other_s_uncommitted_rows(
    composition: Composition, tmp_path: Path, pg_database: PostgresDatabase
) -> None:
    settings = postgres_settings(tmp_path, pg_database)
    async with deployment(composition, tmp_path, settings=settings) as dep:
        alice, bob = await dep.users("alice", "bob")
        both_written = asyncio.Barrier(2)
        # The two transactions and the committed-row count below meet twice: once when
        # both have looked (the count starts), once when the count is done (they end).
        looked = asyncio.Barrier(3)
        counted = asyncio.Barrier(3)
        seen: dict[str, dict[str, object]] = {}

        async def transaction(session: UserSession, other: UserSession, commit: bool) -> None:
            name = session.name
            try:
                async with session.local_scope() as scope:
                    await scope.threads.create(title=f"{name} pending thread")
                    await scope.notes.add(f"{name} pending note")
                    await both_written.wait()
                    # Inside: its own uncommitted rows, nothing of the other's.
                    inside = sorted(n.content for n in await scope.notes.list())
                    raw = await scope.execute_sql(
                        "SELECT user_id FROM notes UNION ALL SELECT user_id FROM threads"
                    )
                    # Outside, even for the same user: nothing of either transaction yet.
                    outside_own = await _visible(session)
                    outside_other = await _visible(other)
                    seen[name] = {
                        "inside": inside,
                        "raw_users": {row["user_id"] for row in raw.rows},
                        "outside_own": outside_own,
                        "outside_other": outside_other,
                    }
                    await looked.wait()
                    await counted.wait()
                    if not commit:
                        raise _ToolCrashError("this transaction is abandoned")
            except _ToolCrashError:
                pass

        async def committed_meanwhile() -> dict[str, dict[str, int]]:
            """Committed rows while both transactions are still open."""
            await looked.wait()
            try:
                return await _committed_counts(pg_database)
            finally:
                await counted.wait()

        *_, meanwhile = await asyncio.gather(
            transaction(alice, bob, commit=True),
            transaction(bob, alice, commit=False),
            committed_meanwhile(),
        )

        for session in (alice, bob):
            view = seen[session.name]
            assert view["inside"] == [f"{session.name} pending note"]
            assert view["raw_users"] == {session.user_id}
            assert view["outside_own"] == ([], [])
            assert view["outside_other"] == ([], [])
        assert meanwhile == {"threads": {}, "notes": {}, "messages": {}}

        # Alice committed, Bob rolled back: each sees exactly that, and only their own.
        (alice_threads, alice_notes), (bob_threads, bob_notes) = await asyncio.gather(
            _visible(alice), _visible(bob)
        )
        assert (alice_threads, alice_notes) == (["alice pending thread"], ["alice pending note"])
        assert (bob_threads, bob_notes) == ([], [])
        counts = await _committed_counts(pg_database)
        assert counts["notes"] == {alice.user_id: 1}
        assert counts["threads"] == {alice.user_id: 1}
        assert_idle(dep.platform)
