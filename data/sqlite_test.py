"""SQLite specifics: URL handling, the single-writer lock, an unusable database file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from context import UserExecutionContext, new_user_id
from data import DataUnavailableError, InvalidInputError, SqlDataAccessFactory
from data.engine import Backend, backend_of, create_data_engine, normalize_url, safe_url
from data.migrate import upgrade_schema


def user() -> UserExecutionContext:
    return UserExecutionContext.from_request(new_user_id())


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        ("postgresql://u:p@h:5/db", "postgresql+asyncpg://u:p@h:5/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_urls_get_the_async_driver(url: str, expected: str) -> None:
    assert normalize_url(url).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite+aiosqlite:///file:x?mode=memory&uri=true",
        "mysql://u@h/db",
        "postgresql+psycopg2://u@h/db",
        "not a url",
    ],
)
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidInputError):
        normalize_url(url)


def test_backend_and_safe_url() -> None:
    assert backend_of("sqlite:///x.db") is Backend.SQLITE
    assert backend_of("postgresql://u:p@h/db") is Backend.POSTGRESQL
    assert "secret" not in safe_url("postgresql://u:secret@h/db")


async def test_a_writer_waits_for_the_other_then_proceeds(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'data.db'}"
    await upgrade_schema(url)
    factory = SqlDataAccessFactory(create_data_engine(url))
    alice = user()
    try:
        first_wrote = asyncio.Event()
        release_first = asyncio.Event()

        async def first() -> None:
            async with factory.create_user_context(alice) as scope:
                await scope.notes.add("first")
                first_wrote.set()
                await release_first.wait()

        async def second() -> None:
            await first_wrote.wait()
            async with factory.create_user_context(alice) as scope:
                await scope.notes.add("second")

        first_task = asyncio.create_task(first())
        second_task = asyncio.create_task(second())
        await first_wrote.wait()
        for _ in range(20):
            await asyncio.sleep(0)
        assert not second_task.done()  # queued behind the first writer
        release_first.set()
        await asyncio.gather(first_task, second_task)
        async with factory.create_user_context(alice) as scope:
            assert sorted(n.content for n in await scope.notes.list()) == ["first", "second"]
    finally:
        await factory.shutdown()


async def test_writer_lock_timeout_is_unavailable(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'data.db'}"
    await upgrade_schema(url)
    factory = SqlDataAccessFactory(create_data_engine(url), write_lock_timeout_seconds=0.05)
    try:
        async with factory.create_user_context(user()) as holder:
            await holder.notes.add("holds the write lock")
            async with factory.create_user_context(user()) as waiter:
                with pytest.raises(DataUnavailableError):
                    await waiter.notes.add("cannot get it")
                assert await waiter.notes.list() == []  # reads still work
    finally:
        await factory.shutdown()


async def test_unusable_database_file_is_unavailable(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'data.db'}"
    factory = SqlDataAccessFactory(create_data_engine(url))
    try:
        async with factory.create_user_context(user()) as scope:
            with pytest.raises(DataUnavailableError):
                await scope.notes.list()
    finally:
        await factory.shutdown()
    with pytest.raises(DataUnavailableError):
        await upgrade_schema(url)
