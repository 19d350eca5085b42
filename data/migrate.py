"""Creating and upgrading the schema with Alembic, from code.

The composition root (or a deployment step) runs :func:`upgrade_schema` with a URL of a
role allowed to change the schema: for PostgreSQL the tables' owner, naming the
application role that then gets row access (subject to row-level security). Services
themselves connect as the application role, which cannot change the schema.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from data.engine import normalize_url
from data.faults import translate_db_error

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "current_revision",
    "downgrade_schema",
    "upgrade_schema",
]

# Not resolved: under Bazel the module is a runfiles symlink and its migrations are beside it.
MIGRATIONS_DIR = Path(__file__).absolute().parent / "migrations"


def alembic_config(*, app_role: str | None = None) -> Config:
    """An Alembic configuration for this package's migrations (no ini file needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["app_role"] = app_role
    return config


async def _run(url: str, action: str, revision: str, app_role: str | None) -> None:
    engine = create_async_engine(normalize_url(url), poolclass=NullPool)

    def run(connection: Connection) -> None:
        config = alembic_config(app_role=app_role)
        config.attributes["connection"] = connection
        if action == "upgrade":
            command.upgrade(config, revision)
        else:
            command.downgrade(config, revision)

    try:
        async with engine.begin() as connection:
            await connection.run_sync(run)
    except Exception as error:
        translated = translate_db_error(error)
        if translated is None:
            raise
        raise translated from error
    finally:
        await engine.dispose()


async def upgrade_schema(url: str, *, app_role: str | None = None, revision: str = "head") -> None:
    """Bring the schema at ``url`` up to ``revision``; grant row access to ``app_role``."""
    await _run(url, "upgrade", revision, app_role)


async def downgrade_schema(url: str, *, revision: str = "base") -> None:
    await _run(url, "downgrade", revision, None)


async def current_revision(url: str) -> str | None:
    engine = create_async_engine(normalize_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()
