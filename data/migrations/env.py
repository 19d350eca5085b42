"""Alembic environment of the ``data`` schema.

Normally run through :func:`data.migrate.upgrade_schema`, which hands over an open
connection (``config.attributes["connection"]``) and the application role to grant table
access to (``config.attributes["app_role"]``). Also usable from the ``alembic`` command
line with ``sqlalchemy.url`` set and ``-x app_role=NAME``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from data.schema import metadata

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_on_connection(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_with_own_engine(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_on_connection)
    finally:
        await engine.dispose()


def main() -> None:
    app_role = context.get_x_argument(as_dictionary=True).get("app_role")
    if app_role and not config.attributes.get("app_role"):
        config.attributes["app_role"] = app_role
    url = config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on_connection(connection)
        return
    if not url:
        raise RuntimeError("no connection given and no sqlalchemy.url configured")
    asyncio.run(run_with_own_engine(url))


main()
