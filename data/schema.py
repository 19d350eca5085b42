"""The database schema: SQLAlchemy 2 declarative models, one per user table.

Every user table has a ``user_id`` column and a primary key that starts with it, so IDs
are per-user namespaces: one user's choice of ID can never collide with (and so reveal)
another user's object. Foreign keys between user tables include ``user_id`` too, so even
the database refuses a message, run or event that points at another user's thread or run.
On PostgreSQL the migrations add row-level security on ``user_id`` to every table listed
in :data:`USER_TABLES`.

The Alembic migrations in ``data/migrations`` create this schema; a test checks that
they and these models agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKeyConstraint,
    Index,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = [
    "USER_TABLES",
    "Base",
    "MessageRow",
    "NoteRow",
    "RunEventRow",
    "RunRow",
    "ThreadRow",
    "ToolUsageRow",
    "UTCDateTime",
    "metadata",
    "table",
]

ID_LENGTH = 128


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as
    naive UTC and made aware again when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: JSON documents: JSONB on PostgreSQL, JSON (text) elsewhere.
JSONDocument = JSON().with_variant(JSONB(), "postgresql")

_NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)
    type_annotation_map: dict[Any, Any] = {  # noqa: RUF012 -- SQLAlchemy's class attribute
        datetime: UTCDateTime(),
        dict[str, Any]: JSONDocument,
        list[str]: JSONDocument,
    }


class ThreadRow(Base):
    __tablename__ = "threads"

    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (Index(None, "user_id", "updated_at"),)


class MessageRow(Base):
    __tablename__ = "messages"

    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    thread_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata")
    created_at: Mapped[datetime]

    __table_args__ = (
        ForeignKeyConstraint(
            ["user_id", "thread_id"], ["threads.user_id", "threads.id"], ondelete="CASCADE"
        ),
        Index(None, "user_id", "thread_id", "created_at"),
    )


class RunRow(Base):
    __tablename__ = "runs"

    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    thread_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    agent_name: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        ForeignKeyConstraint(
            ["user_id", "thread_id"], ["threads.user_id", "threads.id"], ondelete="CASCADE"
        ),
        Index(None, "user_id", "thread_id", "created_at"),
        Index(None, "user_id", "created_at"),
    )


class RunEventRow(Base):
    __tablename__ = "run_events"

    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    seq: Mapped[int] = mapped_column(BigInteger)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]

    __table_args__ = (
        ForeignKeyConstraint(
            ["user_id", "run_id"], ["runs.user_id", "runs.id"], ondelete="CASCADE"
        ),
        UniqueConstraint("user_id", "run_id", "seq"),
    )


class NoteRow(Base):
    __tablename__ = "notes"

    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    content: Mapped[str] = mapped_column(Text)
    tags: Mapped[list[str]]
    #: Case-folded title, content and tags, for backend-independent text search.
    search_text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (Index(None, "user_id", "created_at"),)


class ToolUsageRow(Base):
    __tablename__ = "tool_usage"

    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    tool_name: Mapped[str] = mapped_column(String(128))
    run_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    success: Mapped[bool] = mapped_column(Boolean)
    duration_ms: Mapped[float] = mapped_column(Float)
    error_code: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]

    __table_args__ = (
        Index(None, "user_id", "tool_name", "created_at"),
        Index(None, "user_id", "run_id"),
    )


metadata = Base.metadata

#: Every table that holds user data; each has a ``user_id`` column and, on PostgreSQL,
#: a row-level security policy on it.
USER_TABLES: tuple[str, ...] = (
    ThreadRow.__tablename__,
    MessageRow.__tablename__,
    RunRow.__tablename__,
    RunEventRow.__tablename__,
    NoteRow.__tablename__,
    ToolUsageRow.__tablename__,
)


def table(name: str) -> Table:
    """The Core ``Table`` of a model, for the repositories' SQL expressions."""
    return metadata.tables[name]
