"""Fixtures of the ``data`` tests: the backend under test comes from the environment.

- ``SSOT_TEST_DATA_BACKEND=sqlite|postgres`` (default ``sqlite``) picks the database of
  the conformance suite; with ``postgres`` each test gets a fresh database on one
  hermetic server per test process (``itests.harness``).
- ``SSOT_TEST_CACHE_BACKEND=memory|redis`` (default ``memory``) picks the cache backend.

The same test functions thus run against every backend, as separate Bazel targets; a
backend that cannot start fails the run, it is never skipped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from context import UserExecutionContext, new_user_id
from data.cache import CacheBackend, MemoryCacheBackend, RedisCacheBackend
from data.engine import Backend, create_data_engine
from data.factory import SqlDataAccessFactory
from data.migrate import upgrade_schema
from itests.harness.fixtures import (
    postgres_database,
    postgres_server,
    private_postgres_database,
    private_postgres_server,
    private_redis_server,
    redis_server,
    redis_url,
)
from itests.harness.postgres import PostgresDatabase, PostgresServer

# The harness fixtures these tests use, made visible to pytest from this conftest.
__all__ = [
    "postgres_database",
    "postgres_server",
    "private_postgres_database",
    "private_postgres_server",
    "private_redis_server",
    "redis_server",
    "redis_url",
]

DATA_BACKEND_ENV = "SSOT_TEST_DATA_BACKEND"
CACHE_BACKEND_ENV = "SSOT_TEST_CACHE_BACKEND"


def _choice(variable: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(variable, allowed[0]).strip().lower()
    if value not in allowed:
        raise pytest.UsageError(f"{variable}={value!r}; expected one of {', '.join(allowed)}")
    return value


def selected_data_backend() -> Backend:
    value = _choice(DATA_BACKEND_ENV, ("sqlite", "postgres", "postgresql"))
    return Backend.SQLITE if value == "sqlite" else Backend.POSTGRESQL


def selected_cache_backend() -> str:
    return _choice(CACHE_BACKEND_ENV, ("memory", "redis"))


@dataclass(frozen=True)
class DataDatabase:
    """A migrated database of the selected backend, for one test."""

    backend: Backend
    #: The URL services use (PostgreSQL: the non-owner application role).
    app_url: str
    #: The URL of the schema owner (the same as app_url on SQLite).
    owner_url: str
    #: The PostgreSQL database (None on SQLite), for inspection through the harness.
    postgres: PostgresDatabase | None = None


@pytest.fixture(scope="session")
def migrated_template(postgres_server: PostgresServer) -> Iterator[str]:
    """A database migrated once per test process; tests get copies of it (fast)."""
    template = postgres_server.create_database()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        migrate = upgrade_schema(
            template.sqlalchemy_url("owner"), app_role=postgres_server.app.name
        )
        pool.submit(asyncio.run, migrate).result()
    try:
        yield template.name
    finally:
        if postgres_server.running:
            template.drop()


@pytest.fixture
def migrated_postgres_database(
    postgres_server: PostgresServer, migrated_template: str
) -> Iterator[PostgresDatabase]:
    """A fresh copy of the migrated template, dropped after the test."""
    if not postgres_server.running:
        postgres_server.restart()
    database = postgres_server.create_database(template=migrated_template)
    try:
        yield database
    finally:
        if postgres_server.running:
            database.drop()


async def make_database(
    backend: Backend, request: pytest.FixtureRequest, tmp: Path
) -> DataDatabase:
    if backend is Backend.SQLITE:
        url = f"sqlite+aiosqlite:///{tmp / 'data.db'}"
        await upgrade_schema(url)
        return DataDatabase(backend=backend, app_url=url, owner_url=url)
    database: PostgresDatabase = request.getfixturevalue("migrated_postgres_database")
    return DataDatabase(
        backend=backend,
        app_url=database.sqlalchemy_url("app"),
        owner_url=database.sqlalchemy_url("owner"),
        postgres=database,
    )


def _sqlite_worker_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


@pytest.fixture(autouse=True)
async def no_sqlite_connection_left_open() -> AsyncIterator[None]:
    """Every SQLite connection a test opened is closed by its end (checked, not assumed).

    Each aiosqlite connection runs a worker thread until it is closed; waiting here, while
    the test's event loop still runs, also lets a connection that failed to open finish
    stopping, instead of calling back into a loop that is already closed.
    """
    before = _sqlite_worker_threads()
    yield
    started = _sqlite_worker_threads() - before
    for thread in started:
        await asyncio.to_thread(thread.join, 5.0)
    assert not [t for t in started if t.is_alive()], "a SQLite connection was left open"


@pytest.fixture
def data_backend() -> Backend:
    return selected_data_backend()


@pytest.fixture
async def data_database(
    data_backend: Backend, request: pytest.FixtureRequest, tmp_path: Path
) -> DataDatabase:
    return await make_database(data_backend, request, tmp_path)


@pytest.fixture
def cache_backend_name() -> str:
    return selected_cache_backend()


@pytest.fixture
async def cache_backend(
    cache_backend_name: str, request: pytest.FixtureRequest
) -> AsyncIterator[CacheBackend]:
    backend: CacheBackend
    if cache_backend_name == "redis":
        url: str = request.getfixturevalue("redis_url")
        backend = RedisCacheBackend.from_url(url)
    else:
        backend = MemoryCacheBackend()
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
async def factory(
    data_database: DataDatabase, cache_backend: CacheBackend
) -> AsyncIterator[SqlDataAccessFactory]:
    """A factory over the selected backends with default limits; shut down afterwards."""
    instance = SqlDataAccessFactory(create_data_engine(data_database.app_url), cache=cache_backend)
    try:
        yield instance
    finally:
        await instance.shutdown()


def new_context() -> UserExecutionContext:
    """A root context of a brand-new user."""
    return UserExecutionContext.from_request(new_user_id())


@pytest.fixture
def alice() -> UserExecutionContext:
    return new_context()


@pytest.fixture
def bob() -> UserExecutionContext:
    return new_context()
