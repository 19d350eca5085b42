"""One user's data scope: a unit of work over one connection, for one context.

A :class:`SqlUserDataScope` is what ``DataAccessFactory.create_user_context(ctx)`` hands
out. It implements :class:`~data.api.UserDataScope`:

- **One transaction per unit of work.** The first database call opens a connection and a
  transaction; ``commit()`` (or leaving the ``async with`` block normally) commits it and
  returns the connection to the pool; an exception rolls everything back.
- **PostgreSQL:** the first statement of every transaction is
  ``SELECT set_config('ssot.user_id', <user>, true)``, so row-level security confines
  every statement of the transaction, even raw SQL, to this user's rows.
- **SQLite:** reads before the first write run in autocommit; the first write takes the
  factory's writer lock and issues ``BEGIN IMMEDIATE``, holding SQLite's write lock until
  commit or rollback (one writer at a time, as SQLite requires, queued fairly in asyncio
  rather than by polling in worker threads).
- **Writes run in a savepoint**, so a refused write (a duplicate ID, a row-level security
  violation) is undone alone and the unit of work goes on.
- **Lost writes are never silent.** If the connection fails while uncommitted writes
  exist, every further call raises :class:`~data.api.TransactionAbortedError` until the
  caller acknowledges with ``rollback()``; a failure with nothing written just drops the
  transaction.
- Calls on one scope are serialized; a closed scope (exited, reclaimed after its idle
  TTL, shut down) refuses every call with :class:`~data.api.ScopeClosedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from context import UserExecutionContext
from data.api import (
    DataError,
    DataUnavailableError,
    ScopeClosedError,
    TransactionAbortedError,
    UserCache,
)
from data.engine import Backend
from data.faults import is_disconnect, translate_db_error
from data.repositories import (
    SqlMessageRepository,
    SqlNoteRepository,
    SqlRunEventRepository,
    SqlRunRepository,
    SqlThreadRepository,
    SqlToolUsageRepository,
)
from data.rls import set_user_statement

__all__ = ["CloseReason", "RawResult", "SqlUserDataScope"]

log = structlog.get_logger(__name__)

_SAVEPOINT = "ssot_op"


class CloseReason(enum.StrEnum):
    EXITED = "exited"
    FAILED = "failed"
    RECLAIMED = "reclaimed"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class RawResult:
    """Rows and row count of a raw statement (see :meth:`SqlUserDataScope.execute_sql`)."""

    rows: list[dict[str, Any]]
    rowcount: int


class _ScopedCache:
    """The user's cache as seen through a scope: refused once the scope is closed."""

    def __init__(self, scope: SqlUserDataScope, cache: UserCache) -> None:
        self._scope = scope
        self._cache = cache

    async def get(self, key: str) -> str | None:
        self._scope._check_usable_for_cache()
        return await self._cache.get(key)

    async def set(self, key: str, value: str, *, ttl_seconds: float | None = None) -> None:
        self._scope._check_usable_for_cache()
        await self._cache.set(key, value, ttl_seconds=ttl_seconds)

    async def delete(self, key: str) -> bool:
        self._scope._check_usable_for_cache()
        return await self._cache.delete(key)

    async def exists(self, key: str) -> bool:
        self._scope._check_usable_for_cache()
        return await self._cache.exists(key)

    async def ttl(self, key: str) -> float | None:
        self._scope._check_usable_for_cache()
        return await self._cache.ttl(key)

    async def keys(self, prefix: str = "") -> Sequence[str]:
        self._scope._check_usable_for_cache()
        return await self._cache.keys(prefix)

    async def clear(self) -> int:
        self._scope._check_usable_for_cache()
        return await self._cache.clear()


class SqlUserDataScope:
    """See the module docstring. Built by the factory, never directly by callers."""

    def __init__(
        self,
        *,
        scope_id: str,
        ctx: UserExecutionContext,
        engine: AsyncEngine,
        backend: Backend,
        cache: UserCache,
        writer_lock: asyncio.Lock,
        lock_timeout: float,
        on_close: Callable[[SqlUserDataScope], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scope_id = scope_id
        self._ctx = ctx
        self._engine = engine
        self._backend = backend
        self._writer_lock = writer_lock
        self._lock_timeout = lock_timeout
        self._on_close = on_close
        self._clock = clock
        self.created_at = clock()
        self.last_active = self.created_at
        self._op_lock = asyncio.Lock()
        self._busy = False
        self._conn: AsyncConnection | None = None
        self._in_transaction = False
        self._holds_writer_lock = False
        self._dirty = False
        self._aborted = False
        self._closed = False
        self._close_reason: CloseReason | None = None
        self._lost_writes = False
        self._closed_event = asyncio.Event()
        self._threads = SqlThreadRepository(self)
        self._messages = SqlMessageRepository(self)
        self._runs = SqlRunRepository(self)
        self._run_events = SqlRunEventRepository(self)
        self._notes = SqlNoteRepository(self)
        self._tool_usage = SqlToolUsageRepository(self)
        self._cache = _ScopedCache(self, cache)

    def __repr__(self) -> str:
        state = self._close_reason.value if self._close_reason else "open"
        return f"<SqlUserDataScope {self._scope_id} {state}>"

    # -- the UserDataScope interface ----------------------------------------------------

    @property
    def context(self) -> UserExecutionContext:
        return self._ctx

    @property
    def user_id(self) -> str:
        return self._ctx.user_id

    @property
    def scope_id(self) -> str:
        return self._scope_id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def close_reason(self) -> CloseReason | None:
        return self._close_reason

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def holds_connection(self) -> bool:
        return self._conn is not None

    @property
    def threads(self) -> SqlThreadRepository:
        return self._threads

    @property
    def messages(self) -> SqlMessageRepository:
        return self._messages

    @property
    def runs(self) -> SqlRunRepository:
        return self._runs

    @property
    def run_events(self) -> SqlRunEventRepository:
        return self._run_events

    @property
    def notes(self) -> SqlNoteRepository:
        return self._notes

    @property
    def tool_usage(self) -> SqlToolUsageRepository:
        return self._tool_usage

    @property
    def cache(self) -> UserCache:
        return self._cache

    async def commit(self) -> None:
        async with self._op_lock:
            self._check_usable()
            await self._commit_locked()

    async def rollback(self) -> None:
        async with self._op_lock:
            if self._closed:
                raise ScopeClosedError(f"data scope {self._scope_id} is closed")
            await self._release(commit=False)
            self._aborted = False

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    async def execute_sql(
        self, statement: str, params: Mapping[str, Any] | None = None
    ) -> RawResult:
        """Run one raw SQL statement inside this scope's transaction (in a savepoint).

        For diagnostics and for proving isolation: on PostgreSQL row-level security
        confines it to this user's rows like everything else; on SQLite nothing does,
        so production code must use the repositories.
        """
        async with self.writing() as conn:
            result = await conn.execute(text(statement), dict(params or {}))
            rows = [dict(row._mapping) for row in result] if result.returns_rows else []
            return RawResult(rows=rows, rowcount=result.rowcount)

    # -- what the repositories use ------------------------------------------------------

    def reading(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return self._operation(write=False)

    def writing(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return self._operation(write=True)

    @asynccontextmanager
    async def _operation(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        async with self._op_lock:
            self._check_usable()
            self._busy = True
            self.last_active = self._clock()
            try:
                try:
                    conn = await self._connection(write=write)
                    if write:
                        async with self._savepoint(conn):
                            yield conn
                        self._dirty = True
                    else:
                        yield conn
                except _SavepointRestored as restored:
                    _reraise(restored.error)
                except BaseException as error:
                    if isinstance(error, DataError):
                        raise  # raised by our own checks: the transaction is intact
                    await self._lose_transaction(error)
                    _reraise(error)
            finally:
                self._busy = False
                self.last_active = self._clock()

    @asynccontextmanager
    async def _savepoint(self, conn: AsyncConnection) -> AsyncIterator[None]:
        await conn.execute(text(f"SAVEPOINT {_SAVEPOINT}"))
        try:
            yield
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError) or is_disconnect(error):
                raise
            try:
                await conn.execute(text(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}"))
                await conn.execute(text(f"RELEASE SAVEPOINT {_SAVEPOINT}"))
            except BaseException as cleanup_error:
                raise cleanup_error from error
            # Only this write was undone; the unit of work goes on.
            raise _SavepointRestored(error) from error
        await conn.execute(text(f"RELEASE SAVEPOINT {_SAVEPOINT}"))

    # -- connection and transaction management ------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise ScopeClosedError(f"data scope {self._scope_id} is closed")
        if self._aborted:
            raise TransactionAbortedError(
                "the scope's transaction was lost with uncommitted writes; "
                "call rollback() before using the scope again"
            )

    def _check_usable_for_cache(self) -> None:
        if self._closed:
            raise ScopeClosedError(f"data scope {self._scope_id} is closed")
        self.last_active = self._clock()

    async def _connection(self, *, write: bool) -> AsyncConnection:
        if self._conn is None:
            conn = await self._engine.connect()
            try:
                if self._backend is Backend.POSTGRESQL:
                    # Autobegin: this is the transaction's first statement.
                    await conn.execute(set_user_statement(), {"user_id": self.user_id})
                    self._in_transaction = True
            except BaseException:
                await _close_quietly(conn, invalidate=True)
                raise
            self._conn = conn
        if write and not self._in_transaction:
            await self._begin_sqlite_write(self._conn)
        return self._conn

    async def _begin_sqlite_write(self, conn: AsyncConnection) -> None:
        try:
            # asyncio.timeout, not wait_for: a cancelled Lock.acquire never holds the lock.
            async with asyncio.timeout(self._lock_timeout):
                await self._writer_lock.acquire()
        except TimeoutError:
            raise DataUnavailableError("the database is busy with other writers") from None
        self._holds_writer_lock = True
        await conn.execute(text("BEGIN IMMEDIATE"))
        self._in_transaction = True

    def _release_writer_lock(self) -> None:
        if self._holds_writer_lock:
            self._holds_writer_lock = False
            self._writer_lock.release()

    async def _commit_locked(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            if self._backend is Backend.POSTGRESQL:
                await conn.commit()
            elif self._in_transaction:
                await conn.execute(text("COMMIT"))
        except BaseException as error:
            await self._lose_transaction(error)
            translated = translate_db_error(error)
            if translated is None:
                raise
            raise translated from error
        self._dirty = False
        self._in_transaction = False
        self._release_writer_lock()
        self._conn = None
        await _close_quietly(conn, invalidate=False)

    async def _release(self, *, commit: bool) -> None:
        """Commit or roll back the open transaction (if any) and return the connection."""
        if commit:
            await self._commit_locked()
            return
        conn, self._conn = self._conn, None
        in_transaction, self._in_transaction = self._in_transaction, False
        self._dirty = False
        try:
            if conn is not None and in_transaction:
                if self._backend is Backend.POSTGRESQL:
                    await conn.rollback()
                else:
                    await conn.execute(text("ROLLBACK"))
        except Exception as error:
            log.info(
                "data.rollback_failed", scope_id=self._scope_id, error_type=type(error).__name__
            )
            if conn is not None:
                await _close_quietly(conn, invalidate=True)
                conn = None
        finally:
            self._release_writer_lock()
            if conn is not None:
                await _close_quietly(conn, invalidate=False)

    async def _lose_transaction(self, error: BaseException) -> None:
        """The transaction failed: drop it; remember if writes went with it."""
        had_writes = self._dirty
        conn, self._conn = self._conn, None
        self._in_transaction = False
        self._dirty = False
        self._release_writer_lock()
        if conn is not None:
            if is_disconnect(error) or isinstance(error, asyncio.CancelledError):
                await _close_quietly(conn, invalidate=True)
            else:
                with contextlib.suppress(Exception):
                    if self._backend is Backend.POSTGRESQL:
                        await conn.rollback()
                    else:
                        await conn.execute(text("ROLLBACK"))
                await _close_quietly(conn, invalidate=False)
        if had_writes:
            self._aborted = True
            log.warning(
                "data.transaction_lost",
                scope_id=self._scope_id,
                error_type=type(error).__name__,
            )

    # -- closing ------------------------------------------------------------------------

    async def close(self, reason: CloseReason, *, commit: bool, lock_timeout: float = 10.0) -> None:
        """Close the scope: commit (when asked and possible) or roll back, release everything.

        Raises (after closing) when a commit was asked for and failed, or when the scope's
        writes were already lost (aborted transaction, or reclaimed with pending writes).
        """
        if self._closed:
            if commit and self._lost_writes:
                raise ScopeClosedError(
                    f"data scope {self._scope_id} was {self._close_reason} before it could "
                    "commit; its uncommitted writes were rolled back"
                )
            return
        self._closed = True
        self._close_reason = reason
        acquired = False
        try:
            try:
                async with asyncio.timeout(lock_timeout):
                    await self._op_lock.acquire()
                acquired = True
            except TimeoutError:
                log.warning("data.scope_close_waited_too_long", scope_id=self._scope_id)
            if commit and self._aborted:
                raise TransactionAbortedError(
                    "the scope's transaction was lost with uncommitted writes; "
                    "nothing was committed"
                )
            if not commit and self._dirty:
                self._lost_writes = True
            await self._release(commit=commit and acquired)
        finally:
            if self._conn is not None or self._holds_writer_lock:
                await self._release(commit=False)
            if acquired:
                self._op_lock.release()
            self._closed_event.set()
            self._on_close(self)
            log.debug("data.scope_closed", scope_id=self._scope_id, reason=reason.value)


class _SavepointRestored(Exception):  # noqa: N818 -- internal carrier, not an API error
    """A write failed and its savepoint was rolled back: the transaction is intact."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error


def _reraise(error: BaseException) -> NoReturn:
    """Raise the typed error for ``error`` (``error`` itself if it is typed or a bug)."""
    translated = translate_db_error(error)
    if translated is None or translated is error:
        raise error
    raise translated from error


async def _close_quietly(conn: AsyncConnection, *, invalidate: bool) -> None:
    try:
        if invalidate:
            await conn.invalidate()
        await conn.close()
    except Exception as error:
        log.info("data.connection_close_failed", error_type=type(error).__name__)
