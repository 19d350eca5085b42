"""Fixtures of the engine tests: a SQLite data factory under tmp_path, an engine with the
built-in tools over it, and (from the test harness) a private Redis server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from data.factory import SqlDataAccessFactory
from dispatch.engine.builtin_tools import register_builtin_tools
from dispatch.engine.engine import LocalToolExecutionEngine
from dispatch.engine.registry import ToolRegistry
from dispatch.engine.testing import sqlite_data_factory
from itests.harness.fixtures import redis_server, redis_url

__all__ = ["data_factory", "engine", "redis_server", "redis_url", "registry"]


@pytest.fixture
async def data_factory(tmp_path: Path) -> AsyncIterator[SqlDataAccessFactory]:
    async with sqlite_data_factory(tmp_path / "data") as factory:
        yield factory


@pytest.fixture
def registry() -> ToolRegistry:
    return register_builtin_tools(ToolRegistry())


@pytest.fixture
async def engine(
    registry: ToolRegistry, data_factory: SqlDataAccessFactory
) -> AsyncIterator[LocalToolExecutionEngine]:
    async with LocalToolExecutionEngine(registry=registry, data=data_factory) as engine:
        yield engine
