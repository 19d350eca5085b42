"""Fixtures of the agents tests: the real packages wired in-process under tmp_path
(SQLite, the engine with the built-in tools and a test tool that waits for the test's
signal, the local LLM provider, a buffering sink per run)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import Field, JsonValue

from dispatch.agents.api import AgentSettings
from dispatch.agents.testing import AgentDeployment, agent_deployment
from dispatch.engine.api import PermissionGroup
from dispatch.engine.registry import Tool, ToolInput, ToolInvocation, define_tool


class GateInput(ToolInput):
    label: str = Field(default="", max_length=64)


class Gate:
    """Holds a ``test.gate`` tool call inside its handler until released or cancelled."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    def tool(self) -> Tool[GateInput]:
        async def handler(invocation: ToolInvocation, args: GateInput) -> JsonValue:
            self.entered.set()
            await self.release.wait()
            return {"label": args.label}

        return define_tool(
            name="test.gate",
            title="Wait for the test's gate",
            description="Blocks until the test releases it.",
            group=PermissionGroup.BASIC,
            input_model=GateInput,
            handler=handler,
        )


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
async def deployment(tmp_path: Path, gate: Gate) -> AsyncIterator[AgentDeployment]:
    async with agent_deployment(
        tmp_path / "data", settings=AgentSettings(), extra_tools=[gate.tool()]
    ) as deployed:
        yield deployed
