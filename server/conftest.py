"""Fixtures of the composition root's tests: a started embedded platform under tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.composition import Platform
from server.testing import running_platform


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    async with running_platform(tmp_path / "platform") as started:
        yield started
