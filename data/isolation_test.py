"""Isolation under load: many users at once, each through its own scopes, nothing crosses.

Runs on the selected database and cache backends (see conftest).
"""

# The SQL below interpolates fixed table names only.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest
from sqlalchemy import text

from context import UserExecutionContext, new_user_id
from data import MessageRole, NotFoundError, SqlDataAccessFactory
from data.cache import CacheBackend, user_namespace
from data.conftest import DataDatabase
from data.engine import create_data_engine

USERS = 50
PER_USER = 20


@dataclass
class Written:
    ctx: UserExecutionContext
    thread_id: str = ""
    note_ids: list[str] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)


async def _write(factory: SqlDataAccessFactory, mine: Written) -> None:
    marker = mine.ctx.user_id
    async with factory.create_user_context(mine.ctx) as scope:
        thread = await scope.threads.create(title=f"thread of {marker}")
        mine.thread_id = thread.id
        for i in range(PER_USER):
            note = await scope.notes.add(f"shared words {marker} {i}", tags=["common"])
            mine.note_ids.append(note.id)
            message = await scope.messages.append(
                thread.id, role=MessageRole.USER, content=f"{marker} says {i}"
            )
            mine.message_ids.append(message.id)
            # The same key names for every user; the values say whose they are.
            await scope.cache.set(f"key-{i}", f"{marker}:{i}")
            await asyncio.sleep(0)


async def _read_back(factory: SqlDataAccessFactory, mine: Written) -> None:
    marker = mine.ctx.user_id
    async with factory.create_user_context(mine.ctx) as scope:
        notes = await scope.notes.list(limit=500)
        assert sorted(n.id for n in notes) == sorted(mine.note_ids)
        assert all(marker in n.content for n in notes)
        found = await scope.notes.search("shared words", limit=500)
        assert sorted(n.id for n in found) == sorted(mine.note_ids)
        messages = await scope.messages.list(mine.thread_id, limit=500)
        assert [m.id for m in messages] == mine.message_ids
        assert all(m.content.startswith(marker) for m in messages)
        threads = await scope.threads.list(limit=500)
        assert [t.id for t in threads] == [mine.thread_id]
        assert await scope.cache.keys() == sorted(f"key-{i}" for i in range(PER_USER))
        for i in range(PER_USER):
            assert await scope.cache.get(f"key-{i}") == f"{marker}:{i}"


async def _guess_others(
    factory: SqlDataAccessFactory, mine: Written, others: list[Written]
) -> None:
    victim = random.choice(others)
    async with factory.create_user_context(mine.ctx) as scope:
        with pytest.raises(NotFoundError):
            await scope.notes.get(victim.note_ids[0])
        with pytest.raises(NotFoundError):
            await scope.notes.delete(victim.note_ids[1])
        with pytest.raises(NotFoundError):
            await scope.threads.get(victim.thread_id)
        with pytest.raises(NotFoundError):
            await scope.threads.rename(victim.thread_id, "hijacked")
        with pytest.raises(NotFoundError):
            await scope.messages.get(victim.message_ids[0])
        with pytest.raises(NotFoundError):
            await scope.messages.list(victim.thread_id)
        with pytest.raises(NotFoundError):
            await scope.messages.append(victim.thread_id, role=MessageRole.USER, content="spam")
        with pytest.raises(NotFoundError):
            await scope.threads.delete(victim.thread_id)


async def test_fifty_users_write_and_read_concurrently_without_crossing(
    factory: SqlDataAccessFactory, data_database: DataDatabase, cache_backend: CacheBackend
) -> None:
    users = [Written(UserExecutionContext.from_request(new_user_id())) for _ in range(USERS)]
    await asyncio.gather(*(_write(factory, mine) for mine in users))
    await asyncio.gather(*(_read_back(factory, mine) for mine in users))
    await asyncio.gather(
        *(_guess_others(factory, mine, [u for u in users if u is not mine]) for mine in users)
    )
    # The guesses changed nothing: every user still has exactly what it wrote.
    await asyncio.gather(*(_read_back(factory, mine) for mine in users))

    # And in storage itself every row carries the user that wrote it.
    owner_of = {note_id: u.ctx.user_id for u in users for note_id in u.note_ids}
    owner_of |= {message_id: u.ctx.user_id for u in users for message_id in u.message_ids}
    inspector = create_data_engine(data_database.owner_url)
    try:
        async with inspector.connect() as conn:
            if data_database.postgres is not None:
                # The owner is subject to forced row-level security too: read each user's
                # rows under that user's setting.
                rows: list[tuple[str, str]] = []
                for u in users:
                    async with conn.begin():
                        await conn.execute(
                            text("SELECT set_config('ssot.user_id', :u, true)"),
                            {"u": u.ctx.user_id},
                        )
                        for table in ("notes", "messages"):
                            result = await conn.execute(text(f"SELECT user_id, id FROM {table}"))
                            rows += [(r[0], r[1]) for r in result]
            else:
                rows = []
                for table in ("notes", "messages"):
                    result = await conn.execute(text(f"SELECT user_id, id FROM {table}"))
                    rows += [(r[0], r[1]) for r in result]
    finally:
        await inspector.dispose()
    assert len(rows) == USERS * PER_USER * 2
    assert {row_id: user_id for user_id, row_id in rows} == owner_of
    # Every cache entry sits in its writer's namespace, and nowhere else.
    for u in users:
        namespace = user_namespace(u.ctx.user_id)
        entries = await cache_backend.keys_with_prefix(namespace)
        assert sorted(entries) == sorted(f"{namespace}key-{i}" for i in range(PER_USER))
    assert len(await cache_backend.keys_with_prefix("ssot:cache:")) == USERS * PER_USER
    stats = factory.stats()
    assert stats.live_scopes == 0
    assert stats.connections_checked_out == 0
