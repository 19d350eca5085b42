"""Fixtures of the dispatcher tests: a migrated SQLite data factory under tmp_path, the real
engine with the built-in tools plus two test tools (one that waits for a signal, one that
outlives its timeout), and a dispatcher factory over it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import Field, JsonValue

from data.factory import SqlDataAccessFactory
from dispatch.engine.api import PermissionGroup
from dispatch.engine.builtin_tools import register_builtin_tools
from dispatch.engine.engine import LocalToolExecutionEngine
from dispatch.engine.registry import ToolInput, ToolInvocation, ToolRegistry, define_tool
from dispatch.engine.testing import sqlite_data_factory
from dispatch.tools.service import ToolDispatcherFactory


class WaitInput(ToolInput):
    label: str = Field(default="", max_length=64)


class Gate:
    """Lets a test hold a tool call inside its handler until it releases (or cancels) it."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def registry(gate: Gate) -> ToolRegistry:
    registry = register_builtin_tools(ToolRegistry())

    async def wait_for_gate(invocation: ToolInvocation, args: WaitInput) -> JsonValue:
        gate.entered.set()
        await gate.release.wait()
        return {"label": args.label}

    async def never_finish(invocation: ToolInvocation, args: WaitInput) -> JsonValue:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    registry.register(
        define_tool(
            name="test.gate",
            title="Wait for the test's gate",
            description="Blocks until the test releases it.",
            group=PermissionGroup.BASIC,
            input_model=WaitInput,
            handler=wait_for_gate,
        )
    )
    registry.register(
        define_tool(
            name="test.stuck",
            title="Never finishes",
            description="Runs into its (short) timeout.",
            group=PermissionGroup.BASIC,
            input_model=WaitInput,
            handler=never_finish,
            timeout_seconds=0.05,
        )
    )
    return registry


@pytest.fixture
async def data_factory(tmp_path: Path) -> AsyncIterator[SqlDataAccessFactory]:
    async with sqlite_data_factory(tmp_path / "data") as factory:
        yield factory


@pytest.fixture
async def engine(
    registry: ToolRegistry, data_factory: SqlDataAccessFactory
) -> AsyncIterator[LocalToolExecutionEngine]:
    async with LocalToolExecutionEngine(registry=registry, data=data_factory) as engine:
        yield engine


@pytest.fixture
def dispatchers(engine: LocalToolExecutionEngine) -> ToolDispatcherFactory:
    return ToolDispatcherFactory(engine)
