"""The Alembic migrations build exactly the schema of the models, and can be undone.

Runs on the selected database backend (see conftest).
"""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

from data.conftest import DataDatabase
from data.engine import create_data_engine
from data.migrate import current_revision, downgrade_schema, upgrade_schema
from data.schema import USER_TABLES, metadata


async def _differences(url: str) -> list[Any]:
    engine = create_data_engine(url)
    try:
        async with engine.connect() as conn:

            def compare(sync: Connection) -> list[Any]:
                context = MigrationContext.configure(sync, opts={"compare_type": True})
                return list(compare_metadata(context, metadata))

            return await conn.run_sync(compare)
    finally:
        await engine.dispose()


async def _tables(url: str) -> set[str]:
    engine = create_data_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_migrated_schema_matches_the_models(data_database: DataDatabase) -> None:
    assert await current_revision(data_database.owner_url) == "0001"
    assert await _differences(data_database.owner_url) == []


async def test_every_user_table_has_a_user_id_column() -> None:
    for name in USER_TABLES:
        table = metadata.tables[name]
        assert "user_id" in table.c
        assert next(iter(table.primary_key.columns)).name == "user_id"
    assert set(USER_TABLES) == set(metadata.tables)


async def test_upgrade_is_idempotent_and_downgrade_removes_everything(
    data_database: DataDatabase,
) -> None:
    url = data_database.owner_url
    app_role = data_database.postgres.server.app.name if data_database.postgres else None
    await upgrade_schema(url, app_role=app_role)  # already at head: nothing to do
    assert await current_revision(url) == "0001"
    await downgrade_schema(url)
    assert await current_revision(url) is None
    assert await _tables(url) & set(USER_TABLES) == set()
    await upgrade_schema(url, app_role=app_role)
    assert await _tables(url) >= set(USER_TABLES)
    assert await _differences(url) == []
