"""``SqlDataAccessFactory``: the only way to reach user data.

``async with factory.create_user_context(ctx) as scope:`` opens a
:class:`~data.scope.SqlUserDataScope` for ``ctx``'s user. The factory

- refuses anything but a :class:`~context.UserExecutionContext`;
- allows each user at most ``max_scopes_per_user`` live scopes (default 10); past that
  the user gets :class:`~data.api.ScopeLimitExceededError` while other users are
  unaffected (expired scopes of that user are reclaimed first);
- reclaims scopes that stayed idle longer than ``scope_ttl_seconds`` (leaked by a caller
  that never left its ``async with`` block): their uncommitted writes are rolled back and
  their connection returned. The clean-up task starts with the first scope, not in the
  constructor, so a factory can be built outside an event loop;
- reports :meth:`stats` and, on :meth:`shutdown`, closes every scope, stops the task,
  closes the cache and disposes the engine, leaving no connection open.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Self, cast

import structlog
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from context import UserExecutionContext
from data.api import (
    FactoryClosedError,
    FactoryStats,
    NotAUserContextError,
    ScopeLimitExceededError,
)
from data.cache import CacheBackend, MemoryCacheBackend, NamespacedUserCache, cache_backend_from_url
from data.engine import ConnectionCounter, backend_of, create_data_engine, safe_url
from data.scope import CloseReason, SqlUserDataScope

__all__ = ["DataAccessConfig", "SqlDataAccessFactory"]

log = structlog.get_logger(__name__)

_AGE_BUCKETS: tuple[tuple[str, float], ...] = (
    ("0-5m", 5 * 60.0),
    ("5-30m", 30 * 60.0),
    ("30m-2h", 2 * 3600.0),
    ("2h+", float("inf")),
)


class DataAccessConfig(BaseModel):
    """Settings of a factory (the composition root fills them from its own settings)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: str = "sqlite+aiosqlite:///ssot-data.db"
    #: None or ``memory://`` for the in-process cache; ``redis://...`` for Redis.
    cache_url: str | None = None
    max_scopes_per_user: int = Field(default=10, ge=1)
    scope_ttl_seconds: float = Field(default=3600.0, gt=0)
    cleanup_interval_seconds: float = Field(default=60.0, gt=0)
    pool_size: int = Field(default=10, ge=1)
    max_overflow: int = Field(default=20, ge=0)
    pool_timeout_seconds: float = Field(default=10.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    #: How long a SQLite write waits for the write lock before DataUnavailableError.
    write_lock_timeout_seconds: float = Field(default=30.0, gt=0)

    def __repr__(self) -> str:
        cache = safe_url(self.cache_url) if self.cache_url and "://" in self.cache_url else None
        return (
            f"DataAccessConfig(database_url={safe_url(self.database_url)!r}, cache_url={cache!r})"
        )


class _ScopeEntry(AbstractAsyncContextManager[SqlUserDataScope]):
    """What ``create_user_context`` returns: opens the scope on entry, closes it on exit."""

    def __init__(self, factory: SqlDataAccessFactory, ctx: UserExecutionContext) -> None:
        self._factory = factory
        self._ctx = ctx
        self._scope: SqlUserDataScope | None = None

    async def __aenter__(self) -> SqlUserDataScope:
        if self._scope is not None:
            raise RuntimeError("this scope context manager was already entered")
        self._scope = await self._factory._open_scope(self._ctx)
        return self._scope

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope = self._scope
        if scope is None:
            return
        if exc is None:
            await scope.close(CloseReason.EXITED, commit=True)
        else:
            await scope.close(CloseReason.FAILED, commit=False)


class SqlDataAccessFactory:
    """Implements :class:`~data.api.DataAccessFactory` over SQLAlchemy (see module doc)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        cache: CacheBackend | None = None,
        max_scopes_per_user: int = 10,
        scope_ttl_seconds: float = 3600.0,
        cleanup_interval_seconds: float = 60.0,
        write_lock_timeout_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_scopes_per_user < 1:
            raise ValueError("max_scopes_per_user must be at least 1")
        if scope_ttl_seconds <= 0 or cleanup_interval_seconds <= 0:
            raise ValueError("scope_ttl_seconds and cleanup_interval_seconds must be positive")
        self._engine = engine
        self._backend = backend_of(engine.url)
        self._connections = ConnectionCounter(engine)
        self._cache = cache if cache is not None else MemoryCacheBackend()
        self._max_scopes = max_scopes_per_user
        self._ttl = scope_ttl_seconds
        self._interval = cleanup_interval_seconds
        self._lock_timeout = write_lock_timeout_seconds
        self._clock = clock
        self._writer_lock = asyncio.Lock()
        self._scopes: dict[str, SqlUserDataScope] = {}
        self._per_user: dict[str, int] = {}
        self._opened = 0
        self._rejected = 0
        self._reclaimed = 0
        self._cleanup_task: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_config(cls, config: DataAccessConfig) -> Self:
        """A factory with its own engine and cache built from ``config``.

        The schema must exist already (see :func:`data.migrate.upgrade_schema`).
        """
        engine = create_data_engine(
            config.database_url,
            pool_size=config.pool_size,
            max_overflow=config.max_overflow,
            pool_timeout=config.pool_timeout_seconds,
            connect_timeout=config.connect_timeout_seconds,
        )
        return cls(
            engine,
            cache=cache_backend_from_url(config.cache_url),
            max_scopes_per_user=config.max_scopes_per_user,
            scope_ttl_seconds=config.scope_ttl_seconds,
            cleanup_interval_seconds=config.cleanup_interval_seconds,
            write_lock_timeout_seconds=config.write_lock_timeout_seconds,
        )

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def cache_backend(self) -> CacheBackend:
        return self._cache

    @property
    def closed(self) -> bool:
        return self._closed

    # -- scopes -------------------------------------------------------------------------

    def create_user_context(
        self, ctx: UserExecutionContext
    ) -> AbstractAsyncContextManager[SqlUserDataScope]:
        if not isinstance(cast(object, ctx), UserExecutionContext):
            raise NotAUserContextError(
                f"a data scope needs a UserExecutionContext, got {type(ctx).__name__}"
            )
        if self._closed:
            raise FactoryClosedError("the data access factory was shut down")
        return _ScopeEntry(self, ctx)

    async def _open_scope(self, ctx: UserExecutionContext) -> SqlUserDataScope:
        if self._closed:
            raise FactoryClosedError("the data access factory was shut down")
        self._ensure_cleanup_task()
        user_id = ctx.user_id
        if self._per_user.get(user_id, 0) >= self._max_scopes:
            await self._reclaim_expired(user_id=user_id)
        if self._per_user.get(user_id, 0) >= self._max_scopes:
            self._rejected += 1
            log.warning("data.scope_limit_exceeded", user_id=user_id, limit=self._max_scopes)
            raise ScopeLimitExceededError(
                f"this user already has {self._max_scopes} open data scopes"
            )
        scope_id = f"scope_{secrets.token_hex(8)}"
        scope = SqlUserDataScope(
            scope_id=scope_id,
            ctx=ctx,
            engine=self._engine,
            backend=self._backend,
            cache=NamespacedUserCache(self._cache, user_id),
            writer_lock=self._writer_lock,
            lock_timeout=self._lock_timeout,
            on_close=self._forget,
            clock=self._clock,
        )
        self._scopes[scope_id] = scope
        self._per_user[user_id] = self._per_user.get(user_id, 0) + 1
        self._opened += 1
        log.debug("data.scope_opened", scope_id=scope_id, user_id=user_id)
        return scope

    def _forget(self, scope: SqlUserDataScope) -> None:
        if self._scopes.pop(scope.scope_id, None) is None:
            return
        remaining = self._per_user.get(scope.user_id, 0) - 1
        if remaining > 0:
            self._per_user[scope.user_id] = remaining
        else:
            self._per_user.pop(scope.user_id, None)

    # -- TTL clean-up -------------------------------------------------------------------

    def _ensure_cleanup_task(self) -> None:
        task = self._cleanup_task
        if task is None or task.done():
            self._cleanup_task = asyncio.get_running_loop().create_task(
                self._cleanup_loop(), name="data-scope-cleanup"
            )

    async def _cleanup_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._interval)
            try:
                await self._reclaim_expired()
            except Exception:
                log.exception("data.scope_cleanup_failed")

    async def _reclaim_expired(self, *, user_id: str | None = None) -> int:
        """Close the idle-expired scopes (of one user, or of all); returns how many."""
        now = self._clock()
        expired = [
            scope
            for scope in list(self._scopes.values())
            if (user_id is None or scope.user_id == user_id)
            and not scope.busy
            and now - scope.last_active > self._ttl
        ]
        for scope in expired:
            log.warning(
                "data.scope_reclaimed",
                scope_id=scope.scope_id,
                user_id=scope.user_id,
                idle_seconds=round(now - scope.last_active, 3),
            )
            await scope.close(CloseReason.RECLAIMED, commit=False)
            self._reclaimed += 1
        return len(expired)

    async def reclaim_expired(self) -> int:
        """Run one clean-up pass now (the background task does this periodically)."""
        return await self._reclaim_expired()

    # -- stats and shutdown -------------------------------------------------------------

    def stats(self) -> FactoryStats:
        now = self._clock()
        by_age = dict.fromkeys((name for name, _ in _AGE_BUCKETS), 0)
        for scope in self._scopes.values():
            age = now - scope.created_at
            for name, upper in _AGE_BUCKETS:
                if age < upper:
                    by_age[name] += 1
                    break
        task = self._cleanup_task
        return FactoryStats(
            live_scopes=len(self._scopes),
            scopes_per_user=dict(self._per_user),
            scopes_by_age=by_age,
            scopes_opened=self._opened,
            scopes_rejected=self._rejected,
            scopes_reclaimed=self._reclaimed,
            max_scopes_per_user=self._max_scopes,
            scope_ttl_seconds=self._ttl,
            cleanup_task_running=task is not None and not task.done(),
            connections_checked_out=self._connections.checked_out,
            connections_open=self._connections.open,
            closed=self._closed,
        )

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        task, self._cleanup_task = self._cleanup_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for scope in list(self._scopes.values()):
            await scope.close(CloseReason.SHUTDOWN, commit=False)
        try:
            await self._cache.close()
        except Exception:
            log.exception("data.cache_close_failed")
        await self._engine.dispose()
        log.info("data.factory_shut_down", opened=self._opened, reclaimed=self._reclaimed)
