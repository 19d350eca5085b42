"""Initial schema: threads, messages, runs, run events, notes, tool usage.

On PostgreSQL every table gets forced row-level security keyed by the transaction's
``ssot.user_id`` setting, and the application role (when given) may read and write the
rows its transactions' user owns, nothing else.

Revision ID: 0001
Revises:
Create Date: 2025-09-08
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from data import rls

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("threads", "messages", "runs", "run_events", "notes", "tool_usage")


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _id(name: str, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(128), nullable=nullable)


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "threads",
        _id("user_id"),
        _id("id"),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("metadata", _json(), nullable=False),
        _time("created_at"),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("user_id", "id", name="pk_threads"),
    )
    op.create_index("ix_threads_user_id_updated_at", "threads", ["user_id", "updated_at"])

    op.create_table(
        "messages",
        _id("user_id"),
        _id("id"),
        _id("thread_id"),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        _id("run_id", nullable=True),
        sa.Column("metadata", _json(), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("user_id", "id", name="pk_messages"),
        sa.ForeignKeyConstraint(
            ["user_id", "thread_id"],
            ["threads.user_id", "threads.id"],
            name="fk_messages_user_id_thread_id_threads",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_messages_user_id_thread_id_created_at",
        "messages",
        ["user_id", "thread_id", "created_at"],
    )

    op.create_table(
        "runs",
        _id("user_id"),
        _id("id"),
        _id("thread_id"),
        sa.Column("agent_name", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _time("created_at"),
        _time("started_at", nullable=True),
        _time("finished_at", nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("user_id", "id", name="pk_runs"),
        sa.ForeignKeyConstraint(
            ["user_id", "thread_id"],
            ["threads.user_id", "threads.id"],
            name="fk_runs_user_id_thread_id_threads",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_runs_user_id_thread_id_created_at", "runs", ["user_id", "thread_id", "created_at"]
    )
    op.create_index("ix_runs_user_id_created_at", "runs", ["user_id", "created_at"])

    op.create_table(
        "run_events",
        _id("user_id"),
        _id("id"),
        _id("run_id"),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("payload", _json(), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("user_id", "id", name="pk_run_events"),
        sa.ForeignKeyConstraint(
            ["user_id", "run_id"],
            ["runs.user_id", "runs.id"],
            name="fk_run_events_user_id_run_id_runs",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("user_id", "run_id", "seq", name="uq_run_events_user_id_run_id_seq"),
    )

    op.create_table(
        "notes",
        _id("user_id"),
        _id("id"),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("tags", _json(), nullable=False),
        sa.Column("search_text", sa.Text(), nullable=False),
        _time("created_at"),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("user_id", "id", name="pk_notes"),
    )
    op.create_index("ix_notes_user_id_created_at", "notes", ["user_id", "created_at"])

    op.create_table(
        "tool_usage",
        _id("user_id"),
        _id("id"),
        sa.Column("tool_name", sa.String(128), nullable=False),
        _id("run_id", nullable=True),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        _time("created_at"),
        sa.PrimaryKeyConstraint("user_id", "id", name="pk_tool_usage"),
    )
    op.create_index(
        "ix_tool_usage_user_id_tool_name_created_at",
        "tool_usage",
        ["user_id", "tool_name", "created_at"],
    )
    op.create_index("ix_tool_usage_user_id_run_id", "tool_usage", ["user_id", "run_id"])

    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        _secure_postgres(bind.dialect.identifier_preparer.quote)


def _secure_postgres(quote: Callable[[str], str]) -> None:
    config = op.get_context().config
    app_role = config.attributes.get("app_role") if config is not None else None
    for table in _TABLES:
        for statement in rls.enable_statements(table):
            op.execute(statement)
        if app_role:
            for statement in rls.grant_statements(table, quote(app_role)):
                op.execute(statement)


def downgrade() -> None:
    for table in reversed(_TABLES):
        op.drop_table(table)
