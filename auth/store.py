"""The auth service's own persistent state (SQLAlchemy async).

Tables: accounts, sessions (refresh-token families), refresh_tokens, revoked_tokens (by
``jti``) and user_revocations ("every token of this user issued until T"). SQLite under the
data dir by default (aiosqlite, WAL), PostgreSQL (asyncpg) when a URL says so. Times are
stored as float epoch seconds so SQLite and PostgreSQL compare them identically.

No token string is ever stored; refresh tokens are tracked by ``jti`` only.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import JSON, Double, ForeignKey, Index, String, delete, event, select, update
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from auth.api import Account, AccountExistsError, AccountNotFoundError, Plan

__all__ = [
    "AccountRecord",
    "AuthStore",
    "RefreshOutcome",
]


class _Base(DeclarativeBase):
    pass


class _AccountRow(_Base):
    __tablename__ = "auth_accounts"

    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(512))
    plan: Mapped[str] = mapped_column(String(32))
    roles: Mapped[list[str]] = mapped_column(JSON)
    permissions: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)


class _SessionRow(_Base):
    __tablename__ = "auth_sessions"

    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("auth_accounts.user_id"), index=True
    )
    created_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)


class _RefreshTokenRow(_Base):
    __tablename__ = "auth_refresh_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("auth_sessions.session_id"), index=True
    )
    issued_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double)
    used_at: Mapped[float | None] = mapped_column(Double, nullable=True)


class _RevokedTokenRow(_Base):
    __tablename__ = "auth_revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64))
    revoked_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double)

    __table_args__ = (Index("ix_auth_revoked_tokens_expires_at", "expires_at"),)


class _UserRevocationRow(_Base):
    __tablename__ = "auth_user_revocations"

    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    revoked_before: Mapped[float] = mapped_column(Double)


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """An account with its password hash: internal to the service, never returned to callers."""

    user_id: str
    email: str
    display_name: str
    password_hash: str
    plan: Plan
    roles: tuple[str, ...]
    permissions: tuple[str, ...]
    created_at: float

    def public(self) -> Account:
        return Account(
            user_id=self.user_id,
            email=self.email,
            display_name=self.display_name,
            plan=self.plan,
            roles=self.roles,
            permissions=self.permissions,
            created_at=datetime.fromtimestamp(self.created_at, UTC),
        )

    def __repr__(self) -> str:
        return f"AccountRecord(user_id={self.user_id!r})"


class RefreshOutcome(enum.Enum):
    ROTATED = "rotated"
    REUSED = "reused"  # the token was already used: the session is now revoked
    SESSION_REVOKED = "session_revoked"
    UNKNOWN = "unknown"


def _record(row: _AccountRow) -> AccountRecord:
    return AccountRecord(
        user_id=row.user_id,
        email=row.email,
        display_name=row.display_name,
        password_hash=row.password_hash,
        plan=Plan(row.plan),
        roles=tuple(row.roles),
        permissions=tuple(row.permissions),
        created_at=row.created_at,
    )


class AuthStore:
    """Async access to the auth tables. One instance per process; safe for concurrent use."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        kwargs: dict[str, Any] = {"echo": echo}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        self._engine: AsyncEngine = create_async_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self._engine.sync_engine, "connect", _sqlite_connect)
            event.listen(self._engine.sync_engine, "begin", _sqlite_begin)
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def create_schema(self) -> None:
        async with self._engine.begin() as conn:
            await conn.run_sync(_Base.metadata.create_all)

    async def close(self) -> None:
        await self._engine.dispose()

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session, session.begin():
            yield session

    async def ping(self) -> None:
        async with self._tx() as session:
            await session.execute(select(1))

    # ----- accounts -------------------------------------------------------------------

    async def add_account(self, record: AccountRecord) -> None:
        row = _AccountRow(
            user_id=record.user_id,
            email=record.email,
            display_name=record.display_name,
            password_hash=record.password_hash,
            plan=record.plan.value,
            roles=list(record.roles),
            permissions=list(record.permissions),
            created_at=record.created_at,
            updated_at=record.created_at,
        )
        try:
            async with self._tx() as session:
                session.add(row)
        except IntegrityError:
            raise AccountExistsError("an account with this email already exists") from None

    async def account_by_email(self, email: str) -> AccountRecord | None:
        async with self._tx() as session:
            row = await session.scalar(select(_AccountRow).where(_AccountRow.email == email))
            return None if row is None else _record(row)

    async def account(self, user_id: str) -> AccountRecord | None:
        async with self._tx() as session:
            row = await session.get(_AccountRow, user_id)
            return None if row is None else _record(row)

    async def set_password_hash(self, user_id: str, password_hash: str, now: float) -> None:
        async with self._tx() as session:
            await session.execute(
                update(_AccountRow)
                .where(_AccountRow.user_id == user_id)
                .values(password_hash=password_hash, updated_at=now)
            )

    async def update_account(
        self,
        user_id: str,
        *,
        plan: Plan | None,
        roles: tuple[str, ...] | None,
        permissions: tuple[str, ...] | None,
        now: float,
    ) -> AccountRecord:
        async with self._tx() as session:
            row = await session.get(_AccountRow, user_id, with_for_update=True)
            if row is None:
                raise AccountNotFoundError("no such account")
            if plan is not None:
                row.plan = plan.value
            if roles is not None:
                row.roles = list(roles)
            if permissions is not None:
                row.permissions = list(permissions)
            row.updated_at = now
            return _record(row)

    # ----- sessions and refresh tokens -----------------------------------------------

    async def start_session(
        self,
        *,
        session_id: str,
        user_id: str,
        refresh_jti: str,
        issued_at: float,
        expires_at: float,
    ) -> None:
        async with self._tx() as session:
            session.add(
                _SessionRow(
                    session_id=session_id,
                    user_id=user_id,
                    created_at=issued_at,
                    expires_at=expires_at,
                )
            )
            await session.flush()
            session.add(
                _RefreshTokenRow(
                    jti=refresh_jti,
                    session_id=session_id,
                    issued_at=issued_at,
                    expires_at=expires_at,
                )
            )

    async def rotate_refresh_token(
        self,
        *,
        session_id: str,
        old_jti: str,
        new_jti: str,
        issued_at: float,
        expires_at: float,
        now: float,
    ) -> RefreshOutcome:
        """Consume ``old_jti`` and record ``new_jti`` atomically.

        A second use of ``old_jti`` (replay, or a stolen copy) revokes the whole session.
        """
        async with self._tx() as session:
            family = await session.get(_SessionRow, session_id, with_for_update=True)
            if family is None:
                return RefreshOutcome.UNKNOWN
            if family.revoked_at is not None:
                return RefreshOutcome.SESSION_REVOKED
            consumed = await session.execute(
                update(_RefreshTokenRow)
                .where(
                    _RefreshTokenRow.jti == old_jti,
                    _RefreshTokenRow.session_id == session_id,
                    _RefreshTokenRow.used_at.is_(None),
                )
                .values(used_at=now)
            )
            if _rowcount(consumed) != 1:
                known = await session.get(_RefreshTokenRow, old_jti)
                if known is None or known.session_id != session_id:
                    return RefreshOutcome.UNKNOWN
                family.revoked_at = now
                family.revoke_reason = "refresh_reuse"
                return RefreshOutcome.REUSED
            session.add(
                _RefreshTokenRow(
                    jti=new_jti, session_id=session_id, issued_at=issued_at, expires_at=expires_at
                )
            )
            family.expires_at = max(family.expires_at, expires_at)
            return RefreshOutcome.ROTATED

    async def revoke_session(self, session_id: str, *, reason: str, now: float) -> bool:
        async with self._tx() as session:
            result = await session.execute(
                update(_SessionRow)
                .where(_SessionRow.session_id == session_id, _SessionRow.revoked_at.is_(None))
                .values(revoked_at=now, revoke_reason=reason)
            )
            return bool(_rowcount(result))

    # ----- revocation -----------------------------------------------------------------

    async def revoke_jti(self, jti: str, *, user_id: str, expires_at: float, now: float) -> None:
        async with self._tx() as session:
            if await session.get(_RevokedTokenRow, jti) is None:
                session.add(
                    _RevokedTokenRow(
                        jti=jti, user_id=user_id, revoked_at=now, expires_at=expires_at
                    )
                )

    async def revoke_user_before(self, user_id: str, before: float) -> float:
        """Record "tokens of ``user_id`` issued at or before ``before`` are revoked".

        Never moves the mark backwards; returns the mark in force.
        """
        async with self._tx() as session:
            row = await session.get(_UserRevocationRow, user_id, with_for_update=True)
            if row is None:
                session.add(_UserRevocationRow(user_id=user_id, revoked_before=before))
                return before
            row.revoked_before = max(row.revoked_before, before)
            return row.revoked_before

    async def is_revoked(
        self, *, jti: str, user_id: str, issued_at: float, session_id: str | None
    ) -> bool:
        async with self._tx() as session:
            if await session.get(_RevokedTokenRow, jti) is not None:
                return True
            mark = await session.get(_UserRevocationRow, user_id)
            if mark is not None and issued_at <= mark.revoked_before:
                return True
            if session_id is not None:
                family = await session.get(_SessionRow, session_id)
                if family is None or family.revoked_at is not None:
                    return True
                if family.user_id != user_id:
                    return True
            return False

    async def purge_expired(self, now: float) -> int:
        """Delete revocation entries and refresh tokens whose tokens have expired anyway."""
        async with self._tx() as session:
            removed = await session.execute(
                delete(_RevokedTokenRow).where(_RevokedTokenRow.expires_at < now)
            )
            tokens = await session.execute(
                delete(_RefreshTokenRow).where(_RefreshTokenRow.expires_at < now)
            )
            sessions = await session.execute(
                delete(_SessionRow).where(_SessionRow.expires_at < now)
            )
            return _rowcount(removed) + _rowcount(tokens) + _rowcount(sessions)


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched (its result is a CursorResult, typed as Result)."""
    return cast(CursorResult[Any], result).rowcount


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event (below) issue BEGIN instead of the driver.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # IMMEDIATE takes the write lock up front: a transaction that reads, then writes (refresh
    # rotation) never fails half-way with "database is locked"; it waits (busy_timeout).
    connection.exec_driver_sql("BEGIN IMMEDIATE")
