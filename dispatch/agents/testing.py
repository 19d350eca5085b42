"""Test support for the agents package and for tests that compose it (``itests``).

* :class:`HangingProvider` - an LLM provider that never answers until released: the
  stand-in for a model API that hangs, for timeout and cancellation tests;
* :func:`tool_then_answer` - a :class:`dispatch.llm.testing.ScriptedProvider` outcome that
  asks for one tool call and, once the result is in, answers;
* :class:`AgentDeployment` / :func:`agent_deployment` - the real packages wired together
  in-process: SQLite under a directory, the engine with the built-in tools (plus any
  extra tools), the dispatcher factory, the LLM manager factory (the deterministic local
  provider unless others are given), a buffering sink per run, the agent factory and the
  runner.

Test-only: production code never imports this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.factory import SqlDataAccessFactory
from dispatch.agents.api import Agent, AgentSettings
from dispatch.agents.factory import AgentInstanceFactory
from dispatch.agents.service import AgentRunner
from dispatch.engine.builtin_tools import register_builtin_tools
from dispatch.engine.engine import LocalToolExecutionEngine
from dispatch.engine.registry import Tool, ToolRegistry
from dispatch.engine.testing import sqlite_data_factory
from dispatch.llm.api import LLMConfig, Role, ToolCall
from dispatch.llm.manager import LLMManagerFactory
from dispatch.llm.providers.base import Provider, ProviderCall, ProviderResult, ProviderStreamItem
from dispatch.llm.providers.local import LocalProvider
from dispatch.llm.testing import text_result
from dispatch.tools.service import ToolDispatcherFactory
from dispatch.tools.sinks import BufferingSinkFactory

__all__ = [
    "AgentDeployment",
    "HangingProvider",
    "agent_deployment",
    "llm_factory_with",
    "tool_then_answer",
]


class HangingProvider:
    """An LLM provider whose calls wait until :meth:`release` (never, if nobody calls it).

    With ``trigger``, only calls whose latest user message contains it hang; the others
    are answered by the deterministic local provider. ``entered`` is set when a call
    starts hanging, so a test can wait for the run to be inside the model call instead of
    sleeping.
    """

    def __init__(self, name: str = "hanging", *, trigger: str | None = None) -> None:
        self._name = name
        self._trigger = trigger
        self._local = LocalProvider()
        self.entered = asyncio.Event()
        self._release = asyncio.Event()
        self.calls = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def default_model(self) -> str:
        return "hanging-1"

    def release(self) -> None:
        self._release.set()

    def _hangs(self, call: ProviderCall) -> bool:
        if self._trigger is None:
            return True
        users = [m.content or "" for m in call.messages if m.role is Role.USER]
        return bool(users) and self._trigger in users[-1]

    async def complete(self, call: ProviderCall) -> ProviderResult:
        self.calls += 1
        if not self._hangs(call):
            return await self._local.complete(call)
        self.entered.set()
        await self._release.wait()
        return text_result("released")

    async def stream(self, call: ProviderCall) -> AsyncGenerator[ProviderStreamItem, None]:
        yield await self.complete(call)

    async def aclose(self) -> None:
        return None


def tool_then_answer(
    tool: str, arguments: dict[str, Any] | None = None, *, answer: str = "done"
) -> Callable[[ProviderCall], ProviderResult]:
    """An outcome that calls ``tool`` once, then answers ``answer`` when results are in."""

    def outcome(call: ProviderCall) -> ProviderResult:
        if any(message.role is Role.TOOL for message in call.messages):
            return text_result(answer)
        return text_result(
            "",
            tool_calls=(
                ToolCall(id=f"call_{tool.replace('.', '_')}", name=tool, arguments=arguments or {}),
            ),
        )

    return outcome


def llm_factory_with(provider: Provider, **kwargs: Any) -> LLMManagerFactory:
    """An LLM manager factory whose ``default`` configuration uses only ``provider``."""
    return LLMManagerFactory(
        providers=[provider],
        configs=[LLMConfig(name="default", providers=(provider.name,), timeout_seconds=600)],
        **kwargs,
    )


@dataclass
class AgentDeployment:
    """The real packages wired together in-process (see the module docstring)."""

    data: SqlDataAccessFactory
    engine: LocalToolExecutionEngine
    dispatchers: ToolDispatcherFactory
    llm: LLMManagerFactory
    sinks: BufferingSinkFactory
    factory: AgentInstanceFactory
    runner: AgentRunner
    #: Every agent instance the factory created, in order (strong references).
    instances: list[Agent] = field(default_factory=list)

    def leftovers(self) -> dict[str, int]:
        """What is still held: runs, dispatchers, data scopes (all 0 when idle)."""
        return {
            "runs": self.runner.stats().active_runs,
            "dispatchers": self.dispatchers.stats().live_dispatchers,
            "scopes": self.data.stats().live_scopes,
        }


@asynccontextmanager
async def agent_deployment(
    directory: Path,
    *,
    settings: AgentSettings | None = None,
    llm: LLMManagerFactory | None = None,
    extra_tools: Iterable[Tool[Any]] = (),
    sinks: BufferingSinkFactory | None = None,
    event_sink_factory: Any = None,
) -> AsyncIterator[AgentDeployment]:
    """Build an :class:`AgentDeployment` under ``directory``; shut it down on exit.

    ``event_sink_factory`` replaces the buffering sinks as the runs' sink factory (for
    example one whose sinks refuse every event, like a user with no live connection).
    """
    async with sqlite_data_factory(directory) as data:
        registry = register_builtin_tools(ToolRegistry())
        extras: Sequence[Tool[Any]] = list(extra_tools)
        registry.register_all(extras)
        async with LocalToolExecutionEngine(registry=registry, data=data) as engine:
            dispatchers = ToolDispatcherFactory(engine)
            llm_factory = llm or LLMManagerFactory()
            buffering = sinks or BufferingSinkFactory()
            instances: list[Agent] = []
            factory = AgentInstanceFactory().configure(
                llm_factory=llm_factory,
                tool_dispatcher_factory=dispatchers,
                data_factory=data,
                event_sink_factory=event_sink_factory or buffering,
                settings=settings or AgentSettings(),
                instance_listener=instances.append,
            )
            runner = AgentRunner(factory)
            deployment = AgentDeployment(
                data=data,
                engine=engine,
                dispatchers=dispatchers,
                llm=llm_factory,
                sinks=buffering,
                factory=factory,
                runner=runner,
                instances=instances,
            )
            try:
                yield deployment
            finally:
                await runner.aclose()
                await dispatchers.aclose()
                await llm_factory.aclose()
