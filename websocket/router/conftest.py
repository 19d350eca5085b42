"""Fixtures of the router tests: routers, and the hermetic Redis server for fan-out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from itests.harness.fixtures import redis_server, redis_url  # noqa: F401  (fixtures)
from websocket.router.router import InProcessEventRouter


@pytest.fixture
async def router() -> AsyncIterator[InProcessEventRouter]:
    """An in-process router with default settings, closed after the test."""
    instance = InProcessEventRouter()
    try:
        yield instance
    finally:
        await instance.close()
