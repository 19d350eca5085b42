"""Cross-user data isolation: row-level security on PostgreSQL, per-user Redis cache key
spaces, guessed IDs and many users at once.

The PostgreSQL scenarios run the platform against this module's own PostgreSQL server (a
fresh migrated database per test) connecting as the non-owner, NOBYPASSRLS ``app`` role;
the Redis scenario uses this module's own Redis server; the others use SQLite under
tmp_path.
"""

# Raw SQL below interpolates table names from data.schema.USER_TABLES only.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from context.api import IDKind, new_id
from data.api import DataAccessDeniedError, MessageRole, NotFoundError
from data.cache import user_namespace
from data.schema import USER_TABLES
from dispatch.agents.api import RunNotFoundError, RunState, ThreadNotFoundError
from itests.data_isolation.deployment import (
    Composition,
    UserSession,
    assert_idle,
    assert_mentions_none,
    composition,
    deployment,
    eventually,
    pg_database,
    pg_server,
    pg_template,
    postgres_settings,
    redis,
    redis_server,
)
from itests.harness import PostgresDatabase, RedisServer
from itests.harness.postgres import RoleName

THEME = "cross-user data isolation"

__all__ = [
    "THEME",
    "composition",
    "pg_database",
    "pg_server",
    "pg_template",
    "redis",
    "redis_server",
]


async def _seed(session: UserSession, secret: str) -> None:
    """Rows of ``session``'s user in every user table, written through the composition
    (an agent run with a tool call, a thread with messages) plus one stored run event."""
    info, _ = await session.run(f"remember that {secret}")
    assert info.state is RunState.COMPLETED
    async with await session.open() as scope:
        thread = await scope.threads.create(title=f"{secret} thread")
        await scope.messages.append(thread.id, role=MessageRole.USER, content=f"{secret} hi")
    async with session.local_scope() as own:
        await own.run_events.append(info.run_id, seq=1, event_type="agent_started")


async def _own_ids(session: UserSession) -> dict[str, set[str]]:
    """The IDs of the user's rows per table, as the repositories list them."""
    async with session.local_scope() as scope:
        threads = await scope.threads.list()
        runs = await scope.runs.list()
        messages = [m for t in threads for m in await scope.messages.list(t.id)]
        events = [e for r in runs for e in await scope.run_events.list(r.id)]
        return {
            "threads": {t.id for t in threads},
            "messages": {m.id for m in messages},
            "runs": {r.id for r in runs},
            "run_events": {e.id for e in events},
            "notes": {n.id for n in await scope.notes.list()},
            "tool_usage": {u.id for u in await scope.tool_usage.list()},
        }


async def _rows_per_user(database: PostgresDatabase, role: RoleName) -> dict[str, dict[str, int]]:
    """Row counts per table and user, read as ``role`` on a plain connection."""

    async def count(conn: AsyncConnection) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for table in USER_TABLES:
            rows = await conn.execute(text(f"SELECT user_id, count(*) FROM {table} GROUP BY 1"))
            found[table] = {str(user): int(n) for user, n in rows}
        return found

    return await asyncio.to_thread(
        database.server.run_admin,
        count,
        database.name,
        role,
    )


async def test_postgresql_row_level_security_hides_other_users_rows_from_raw_sql(
    composition: Composition, tmp_path: Path, pg_database: PostgresDatabase
) -> None:
    settings = postgres_settings(tmp_path, pg_database)
    async with deployment(composition, tmp_path, settings=settings) as dep:
        users = await dep.users("alice", "bob", "carol")
        secrets_of = {s.user_id: f"secret {secrets.token_hex(4)}" for s in users}
        await asyncio.gather(*(_seed(s, secrets_of[s.user_id]) for s in users))
        expected = {s.user_id: await _own_ids(s) for s in users}
        for ids in expected.values():
            assert all(ids[table] for table in USER_TABLES), ids

        async def raw_reads(session: UserSession) -> None:
            others = [u.user_id for u in users if u is not session]
            async with session.local_scope() as scope:
                for table in USER_TABLES:
                    everything = await scope.execute_sql(f"SELECT user_id, id FROM {table}")
                    assert {r["user_id"] for r in everything.rows} == {session.user_id}, table
                    assert {r["id"] for r in everything.rows} == expected[session.user_id][table]
                    for other in others:
                        asked = await scope.execute_sql(
                            f"SELECT id FROM {table} WHERE user_id = :other", {"other": other}
                        )
                        assert asked.rows == []
                        for row_id in expected[other][table]:
                            by_id = await scope.execute_sql(
                                f"SELECT id FROM {table} WHERE id = :id", {"id": row_id}
                            )
                            assert by_id.rows == []
                notes = await scope.execute_sql("SELECT content FROM notes")
                assert_mentions_none(notes.rows, *(secrets_of[other] for other in others))

        await asyncio.gather(*(raw_reads(session) for session in users))

        # The rows are all there (the superuser bypasses row-level security)...
        seen_by_admin = await _rows_per_user(pg_database, "admin")
        for table in USER_TABLES:
            assert seen_by_admin[table] == {
                s.user_id: len(expected[s.user_id][table]) for s in users
            }
        # ...while the application role sees nothing without a user setting.
        assert await _rows_per_user(pg_database, "app") == {t: {} for t in USER_TABLES}
        assert_idle(dep.platform)


async def test_raw_update_and_delete_of_another_user_s_rows_affect_nothing(
    composition: Composition, tmp_path: Path, pg_database: PostgresDatabase
) -> None:
    settings = postgres_settings(tmp_path, pg_database)
    async with deployment(composition, tmp_path, settings=settings) as dep:
        alice, bob = await dep.users("alice", "bob")

        async def write(session: UserSession) -> tuple[list[str], str]:
            async with await session.open() as scope:
                notes = [(await scope.notes.add(f"{session.name} note {i}")).id for i in range(3)]
                thread = await scope.threads.create(title=f"{session.name} thread")
                for i in range(2):
                    await scope.messages.append(
                        thread.id, role=MessageRole.USER, content=f"{session.name} says {i}"
                    )
            return notes, thread.id

        (alice_notes, alice_thread), (bob_notes, bob_thread) = await asyncio.gather(
            write(alice), write(bob)
        )
        mine = {alice.user_id: (alice_notes, alice_thread), bob.user_id: (bob_notes, bob_thread)}

        async def vandalize(session: UserSession, other: UserSession) -> None:
            other_notes, other_thread = mine[other.user_id]
            async with session.local_scope() as scope:
                targeted = [
                    (
                        "UPDATE notes SET content = 'hijacked' WHERE user_id = :o",
                        {"o": other.user_id},
                    ),
                    (
                        "UPDATE notes SET user_id = :me WHERE user_id = :o",
                        {"me": session.user_id, "o": other.user_id},
                    ),
                    ("UPDATE threads SET title = 'hijacked' WHERE id = :t", {"t": other_thread}),
                    ("DELETE FROM notes WHERE user_id = :o", {"o": other.user_id}),
                    ("DELETE FROM threads WHERE id = :t", {"t": other_thread}),
                    ("DELETE FROM messages WHERE thread_id = :t", {"t": other_thread}),
                ]
                targeted += [
                    ("DELETE FROM notes WHERE id = :n", {"n": note}) for note in other_notes
                ]
                for statement, params in targeted:
                    result = await scope.execute_sql(statement, params)
                    assert result.rowcount == 0, statement
                # Unfiltered statements reach the user's own rows, and only those.
                stamped = await scope.execute_sql(
                    "UPDATE notes SET content = content || :mark",
                    {"mark": f" (checked by {session.name})"},
                )
                assert stamped.rowcount == 3
                wiped = await scope.execute_sql("DELETE FROM messages")
                assert wiped.rowcount == 2
                # Handing an own row to the other user is refused by the policy's check.
                with pytest.raises(DataAccessDeniedError):
                    await scope.execute_sql(
                        "UPDATE notes SET user_id = :o WHERE id = :n",
                        {"o": other.user_id, "n": mine[session.user_id][0][0]},
                    )

        await asyncio.gather(vandalize(alice, bob), vandalize(bob, alice))

        for session in (alice, bob):
            notes, thread = mine[session.user_id]
            async with await session.open() as scope:
                contents = sorted(n.content for n in await scope.notes.list())
                assert contents == [
                    f"{session.name} note {i} (checked by {session.name})" for i in range(3)
                ]
                assert sorted(n.id for n in await scope.notes.list()) == sorted(notes)
                assert (await scope.threads.get(thread)).title == f"{session.name} thread"
                assert await scope.messages.list(thread) == []  # wiped by its own owner only
        counts = await _rows_per_user(pg_database, "admin")
        assert counts["notes"] == {alice.user_id: 3, bob.user_id: 3}
        assert counts["threads"] == {alice.user_id: 1, bob.user_id: 1}
        assert counts["messages"] == {}
        assert_idle(dep.platform)


async def test_redis_cache_key_spaces_of_users_never_meet(
    tmp_path: Path, redis: RedisServer
) -> None:
    async with deployment("inprocess", tmp_path, redis_url=redis.url) as dep:
        users = await dep.users(*(f"user{i}" for i in range(6)))
        alice, bob = users[0], users[1]
        # Keys every user writes; the last tries to spell Bob's raw key from inside Alice's.
        common = ["profile", "session:current", "a/../b", "*", "ssot:cache:"]
        spoof = f"{user_namespace(bob.user_id)}profile"

        async def fill(session: UserSession) -> tuple[dict[str, str | None], list[str]]:
            ctx = await session.context()
            async with dep.platform.data.create_user_context(ctx) as scope:
                for key in common:
                    await scope.cache.set(key, f"{session.name}:{key}")
                await scope.cache.set(spoof, f"{session.name} spoofing")
                await scope.cache.set("short-lived", session.name, ttl_seconds=300)
                values = {key: await scope.cache.get(key) for key in [*common, spoof]}
                return values, list(await scope.cache.keys())

        filled = await asyncio.gather(*(fill(session) for session in users))
        expected_keys = sorted([*common, spoof, "short-lived"])
        for session, (values, keys) in zip(users, filled, strict=True):
            assert values == {
                **{key: f"{session.name}:{key}" for key in common},
                spoof: f"{session.name} spoofing",
            }
            assert keys == expected_keys

        # In Redis itself every key sits in exactly one user's namespace.
        with redis.client() as raw:
            stored = sorted(key.decode() for key in raw.scan_iter(match="ssot:cache:*"))
            namespaces = {session.user_id: user_namespace(session.user_id) for session in users}
            for key in stored:
                owners = [u for u, ns in namespaces.items() if key.startswith(ns)]
                assert len(owners) == 1, key
            for session in users:
                owned = [k for k in stored if k.startswith(namespaces[session.user_id])]
                assert len(owned) == len(expected_keys)
            raw_bob_profile = raw.get(f"{namespaces[bob.user_id]}profile")
            assert raw_bob_profile == f"{bob.name}:profile".encode()
            assert raw.exists(f"{namespaces[alice.user_id]}{spoof}") == 1

        async def alice_clears() -> int:
            async with dep.platform.data.create_user_context(await alice.context()) as scope:
                return await scope.cache.clear()

        async def bob_deletes() -> bool:
            async with dep.platform.data.create_user_context(await bob.context()) as scope:
                return await scope.cache.delete("profile")

        cleared, deleted = await asyncio.gather(alice_clears(), bob_deletes())
        assert cleared == len(expected_keys)
        assert deleted

        async def look(session: UserSession) -> tuple[list[str], str | None, float | None]:
            async with dep.platform.data.create_user_context(await session.context()) as scope:
                return (
                    list(await scope.cache.keys()),
                    await scope.cache.get("profile"),
                    await scope.cache.ttl("short-lived"),
                )

        looks = await asyncio.gather(*(look(session) for session in users))
        assert looks[0] == ([], None, None)  # Alice's space is empty...
        assert looks[1][0] == sorted(set(expected_keys) - {"profile"})  # ...Bob lost one key
        assert looks[1][1] is None
        for session, (keys, profile, ttl) in zip(users[2:], looks[2:], strict=True):
            assert keys == expected_keys  # ...and everyone else kept everything
            assert profile == f"{session.name}:profile"
            assert ttl is not None and 0 < ttl <= 300
        assert_idle(dep.platform)
    # The platform's Redis clients are all closed.
    await eventually(lambda: redis.connected_clients() == 0)


async def test_guessed_ids_of_another_user_s_objects_give_not_found(
    composition: Composition, tmp_path: Path
) -> None:
    async with deployment(composition, tmp_path) as dep:
        alice, bob = await dep.users("alice", "bob")

        async def create(session: UserSession) -> dict[str, str]:
            info, _ = await session.run(f"remember that {session.name} hides the key")
            async with await session.open() as scope:
                message = await scope.messages.append(
                    info.thread_id, role=MessageRole.USER, content=f"{session.name} whispers"
                )
                (note,) = await scope.notes.list()
            return {
                "thread": info.thread_id,
                "run": info.run_id,
                "message": message.id,
                "note": note.id,
            }

        ids = dict(
            zip(
                (alice.user_id, bob.user_id),
                await asyncio.gather(create(alice), create(bob)),
                strict=True,
            )
        )

        async def guess(session: UserSession, theirs: dict[str, str]) -> list[Exception]:
            refusals: list[Exception] = []
            attempts: list[Any] = []
            async with await session.open() as scope:
                attempts = [
                    lambda: scope.threads.get(theirs["thread"]),
                    lambda: scope.threads.rename(theirs["thread"], "mine now"),
                    lambda: scope.messages.list(theirs["thread"]),
                    lambda: scope.messages.get(theirs["message"]),
                    lambda: scope.messages.append(
                        theirs["thread"], role=MessageRole.USER, content="injected"
                    ),
                    lambda: scope.notes.get(theirs["note"]),
                    lambda: scope.notes.delete(theirs["note"]),
                    lambda: scope.runs.get(theirs["run"]),
                    lambda: scope.runs.create(thread_id=theirs["thread"], agent_name="assistant"),
                    lambda: scope.threads.delete(theirs["thread"]),
                ]
                for attempt in attempts:
                    with pytest.raises(NotFoundError) as missing:
                        await attempt()
                    refusals.append(missing.value)
                # The same refusal, word for word, as for an ID nobody has.
                invented = new_id(IDKind.NOTE)
                with pytest.raises(NotFoundError) as nobody:
                    await scope.notes.get(invented)
                assert str(nobody.value).replace(invented, "ID") == str(refusals[5]).replace(
                    theirs["note"], "ID"
                )
            caller = await session.caller()
            for action in (session.agents.get_run, session.agents.cancel_run):
                with pytest.raises(RunNotFoundError) as unknown:
                    await action(caller, theirs["run"])
                refusals.append(unknown.value)
            with pytest.raises(ThreadNotFoundError) as no_thread:
                await session.agents.start_run(
                    caller, "assistant", "hi", thread_id=theirs["thread"]
                )
            refusals.append(no_thread.value)
            return refusals

        alice_refusals, bob_refusals = await asyncio.gather(
            guess(alice, ids[bob.user_id]), guess(bob, ids[alice.user_id])
        )
        for refusals, victim in ((alice_refusals, bob), (bob_refusals, alice)):
            assert len(refusals) == 13
            for refusal in refusals:
                assert_mentions_none(refusal, f"{victim.name} whispers", f"{victim.name} hides")

        # Every object is still there for its owner, unchanged.
        for session in (alice, bob):
            own = ids[session.user_id]
            async with await session.open() as scope:
                assert (await scope.threads.get(own["thread"])).title != "mine now"
                contents = [m.content for m in await scope.messages.list(own["thread"])]
                assert f"{session.name} whispers" in contents
                assert "injected" not in contents
                assert (
                    await scope.notes.get(own["note"])
                ).content == f"{session.name} hides the key"
                assert [r.id for r in await scope.runs.list()] == [own["run"]]
            info = await session.agents.get_run(await session.caller(), own["run"])
            assert info.state is RunState.COMPLETED
        assert_idle(dep.platform)


async def test_fifty_concurrent_users_notes_and_messages_never_cross(
    composition: Composition, tmp_path: Path
) -> None:
    async with deployment(composition, tmp_path) as dep:
        users = await dep.users(*(f"user{i:02d}" for i in range(50)))
        tags = {s.user_id: f"tag{secrets.token_hex(6)}" for s in users}

        async def write(session: UserSession) -> str:
            tag = tags[session.user_id]
            async with await session.open() as scope:
                thread = await scope.threads.create(title=tag)
                for i in range(2):
                    await scope.messages.append(
                        thread.id, role=MessageRole.USER, content=f"{tag} message {i}"
                    )
                for i in range(2):
                    await scope.notes.add(f"{tag} note {i}", tags=[tag])
            return thread.id

        threads = dict(
            zip(
                (s.user_id for s in users),
                await asyncio.gather(*(write(s) for s in users)),
                strict=True,
            )
        )

        async def read(session: UserSession, neighbour: UserSession) -> dict[str, Any]:
            tag, foreign = tags[session.user_id], tags[neighbour.user_id]
            async with await session.open() as scope:
                return {
                    "notes": sorted(n.content for n in await scope.notes.list()),
                    "found": sorted(n.content for n in await scope.notes.search(tag)),
                    "foreign": list(await scope.notes.search(foreign)),
                    "threads": [t.id for t in await scope.threads.list()],
                    "messages": [
                        m.content for m in await scope.messages.list(threads[session.user_id])
                    ],
                }

        readings = await asyncio.gather(
            *(read(s, users[(i + 1) % len(users)]) for i, s in enumerate(users))
        )
        for session, seen in zip(users, readings, strict=True):
            tag = tags[session.user_id]
            assert seen["notes"] == [f"{tag} note 0", f"{tag} note 1"]
            assert seen["found"] == seen["notes"]
            assert seen["foreign"] == []
            assert seen["threads"] == [threads[session.user_id]]
            assert seen["messages"] == [f"{tag} message 0", f"{tag} message 1"]
        assert_idle(dep.platform)
