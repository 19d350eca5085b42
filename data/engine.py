"""Database engines: backend selection by URL, per-backend settings, connection counting.

- ``sqlite+aiosqlite:///path/to/file.db`` (the embedded default; ``sqlite:///`` works
  too). The driver runs in autocommit mode and the scope issues ``BEGIN IMMEDIATE`` /
  ``COMMIT`` itself, so a transaction takes SQLite's write lock before its first write and
  savepoints behave. WAL journal, foreign keys on. In-memory databases are refused: each
  pooled connection would see a different, empty database.
- ``postgresql+asyncpg://user:password@host:port/db`` (``postgresql://`` works too), with
  pre-ping so connections broken by a server restart are replaced, not handed out.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from data.api import InvalidInputError

__all__ = [
    "Backend",
    "ConnectionCounter",
    "backend_of",
    "create_data_engine",
    "normalize_url",
    "safe_url",
]


class Backend(enum.StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


_DRIVERS = {Backend.SQLITE: "aiosqlite", Backend.POSTGRESQL: "asyncpg"}


def normalize_url(url: str | URL) -> URL:
    """The URL with the async driver of its backend; refuses other backends."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidInputError("the database URL cannot be parsed") from None
    backend = parsed.get_backend_name()
    if backend not in _DRIVERS:
        raise InvalidInputError(f"unsupported database backend {backend!r}")
    driver = _DRIVERS[Backend(backend)]
    explicit_driver = parsed.drivername.partition("+")[2]
    if explicit_driver not in ("", driver):
        raise InvalidInputError(f"the {backend} backend is used with the {driver} driver")
    parsed = parsed.set(drivername=f"{backend}+{driver}")
    if backend == Backend.SQLITE:
        database = parsed.database or ""
        if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
            raise InvalidInputError("SQLite needs a database file, not an in-memory database")
    return parsed


def backend_of(url: str | URL) -> Backend:
    return Backend(normalize_url(url).get_backend_name())


def safe_url(url: str | URL) -> str:
    """The URL for logs: password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def create_data_engine(
    url: str | URL,
    *,
    pool_size: int = 10,
    max_overflow: int = 20,
    pool_timeout: float = 10.0,
    connect_timeout: float = 5.0,
    busy_timeout: float = 30.0,
) -> AsyncEngine:
    """An async engine for ``url`` configured for its backend (see the module docstring)."""
    parsed = normalize_url(url)
    backend = Backend(parsed.get_backend_name())
    if backend is Backend.SQLITE:
        engine = create_async_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            isolation_level="AUTOCOMMIT",
            connect_args={"timeout": busy_timeout},
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_pre_ping=True,
        connect_args={
            "timeout": connect_timeout,
            "server_settings": {"application_name": "ssot-data"},
        },
    )


class ConnectionCounter:
    """Counts the DBAPI connections an engine opened and closed, from pool events.

    ``open`` is what is connected right now (pooled or checked out); after the engine is
    disposed and every connection returned it is 0, which shutdown tests assert.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.opened = 0
        self.closed = 0
        sync_engine = engine.sync_engine
        event.listen(sync_engine, "connect", self._on_connect)
        event.listen(sync_engine, "close", self._on_close)
        event.listen(sync_engine, "close_detached", self._on_close_detached)

    def _on_connect(self, _dbapi: Any, _record: ConnectionPoolEntry) -> None:
        self.opened += 1

    def _on_close(self, _dbapi: Any, _record: ConnectionPoolEntry) -> None:
        self.closed += 1

    def _on_close_detached(self, _dbapi: Any) -> None:
        self.closed += 1

    @property
    def open(self) -> int:
        return self.opened - self.closed

    @property
    def checked_out(self) -> int:
        pool = self._engine.pool
        return pool.checkedout() if isinstance(pool, QueuePool) else 0
