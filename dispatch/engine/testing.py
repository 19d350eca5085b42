"""Test support for the engine and for tests that compose it.

* :func:`make_caller` - a :class:`ToolCaller` for a fresh user (or a given one) with a plan,
  roles and developer flag, as if taken from a verified access token;
* :func:`sqlite_data_factory` - a migrated SQLite ``DataAccessFactory`` in a directory,
  shut down on exit.

Test-only: production code never imports this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from auth.api import Plan
from context.api import UserExecutionContext, new_user_id
from data.factory import DataAccessConfig, SqlDataAccessFactory
from data.migrate import upgrade_schema
from dispatch.engine.api import ToolCaller

__all__ = ["make_caller", "sqlite_data_factory"]


def make_caller(
    plan: Plan = Plan.FREE,
    *,
    roles: Iterable[str] = (),
    is_developer: bool = False,
    user_id: str | None = None,
) -> ToolCaller:
    """A caller with a new root context for ``user_id`` (a fresh user when omitted)."""
    ctx = UserExecutionContext.from_request(user_id or new_user_id())
    return ToolCaller(context=ctx, plan=plan, roles=tuple(roles), is_developer=is_developer)


@asynccontextmanager
async def sqlite_data_factory(directory: Path) -> AsyncIterator[SqlDataAccessFactory]:
    """A factory over a fresh, migrated SQLite database under ``directory``."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    url = f"sqlite+aiosqlite:///{directory / 'data.db'}"
    await upgrade_schema(url)
    factory = SqlDataAccessFactory.from_config(DataAccessConfig(database_url=url))
    try:
        yield factory
    finally:
        await factory.shutdown()
