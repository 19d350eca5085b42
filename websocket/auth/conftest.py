"""Fixtures of the websocket.auth tests: a real local auth service under tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from auth.service import LocalAuthService
from auth.testing import fast_settings
from websocket.auth.testing import TestUser, register_user

__all__ = ["alice", "auth_service", "bob"]


@pytest.fixture
async def auth_service(tmp_path: Path) -> AsyncIterator[LocalAuthService]:
    async with await LocalAuthService.create(fast_settings(tmp_path / "auth")) as service:
        yield service


@pytest.fixture
async def alice(auth_service: LocalAuthService) -> TestUser:
    return await register_user(auth_service, "alice")


@pytest.fixture
async def bob(auth_service: LocalAuthService) -> TestUser:
    return await register_user(auth_service, "bob")
