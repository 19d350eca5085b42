"""AgentInstanceFactory: configured once with every dependency, fresh instances always."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dispatch.agents.api import (
    Agent,
    AgentError,
    FactoryAlreadyConfiguredError,
    FactoryNotConfiguredError,
    InvalidAgentCallerError,
    MissingDependencyError,
    UnknownAgentError,
)
from dispatch.agents.assistant import AssistantAgent
from dispatch.agents.factory import AgentInstanceFactory
from dispatch.agents.notes import NotesAgent
from dispatch.agents.testing import AgentDeployment
from dispatch.engine.builtin_tools import register_builtin_tools
from dispatch.engine.engine import LocalToolExecutionEngine
from dispatch.engine.registry import ToolRegistry
from dispatch.engine.testing import make_caller, sqlite_data_factory
from dispatch.llm.manager import LLMManagerFactory
from dispatch.tools.api import EventType
from dispatch.tools.service import ToolDispatcherFactory
from dispatch.tools.sinks import BufferingEventSink, BufferingSinkFactory

DEPENDENCIES = ("llm_factory", "tool_dispatcher_factory", "data_factory", "event_sink_factory")


@pytest.fixture
async def dependencies(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """Every dependency, real and usable (SQLite under tmp_path, the built-in tools)."""
    async with sqlite_data_factory(tmp_path / "data") as data:
        registry = register_builtin_tools(ToolRegistry())
        async with LocalToolExecutionEngine(registry=registry, data=data) as engine:
            yield {
                "llm_factory": LLMManagerFactory(),
                "tool_dispatcher_factory": ToolDispatcherFactory(engine),
                "data_factory": data,
                "event_sink_factory": BufferingSinkFactory(),
            }


@pytest.mark.parametrize("missing", DEPENDENCIES)
async def test_a_missing_dependency_is_refused_at_configure_time(
    dependencies: dict[str, Any], missing: str
) -> None:
    dependencies[missing] = None
    factory = AgentInstanceFactory()
    with pytest.raises(MissingDependencyError) as refused:
        factory.configure(**dependencies)
    assert refused.value.dependency == missing
    assert missing in refused.value.message
    assert refused.value.error_code == "AGENT_DEPENDENCY_MISSING"
    assert not factory.configured


@pytest.mark.parametrize("wrong", DEPENDENCIES)
async def test_an_unusable_dependency_is_refused_at_configure_time(
    dependencies: dict[str, Any], wrong: str
) -> None:
    dependencies[wrong] = object()  # has none of the methods (and is not callable)
    with pytest.raises(MissingDependencyError) as refused:
        AgentInstanceFactory().configure(**dependencies)
    assert refused.value.dependency == wrong


async def test_configured_once_and_used_only_once_configured(
    dependencies: dict[str, Any],
) -> None:
    factory = AgentInstanceFactory()
    with pytest.raises(FactoryNotConfiguredError):
        factory.create_agent_instance("assistant", make_caller())
    factory.configure(**dependencies)
    with pytest.raises(FactoryAlreadyConfiguredError):
        factory.configure(**dependencies)
    assert factory.stats().agent_types == ("assistant", "notes")


async def test_factories_are_independent_objects(dependencies: dict[str, Any]) -> None:
    first = AgentInstanceFactory().configure(**dependencies)
    second = AgentInstanceFactory()
    assert first.configured and not second.configured


async def test_unknown_agent_is_not_found(deployment: AgentDeployment) -> None:
    caller = make_caller()
    for name in ["planner", "", "ASSISTANT", "assistant\x00", "x" * 500]:
        with pytest.raises(UnknownAgentError) as refused:
            deployment.factory.create_agent_instance(name, caller)
        assert refused.value.grpc_status_name == "NOT_FOUND"
        assert len(refused.value.message) < 200


async def test_an_agent_needs_a_verified_caller(deployment: AgentDeployment) -> None:
    caller = make_caller()
    bare_context: Any = caller.context
    with pytest.raises(InvalidAgentCallerError):
        deployment.factory.create_agent_instance("assistant", bare_context)


async def test_every_creation_is_a_fresh_instance(deployment: AgentDeployment) -> None:
    caller = make_caller()
    agents: list[Agent] = [
        deployment.factory.create_agent_instance("assistant" if i % 2 else "notes", caller)
        for i in range(100)
    ]
    for index, agent in enumerate(agents):
        for other in agents[index + 1 :]:
            assert agent is not other
            assert agent.events is not other.events
            assert agent.instance_id != other.instance_id
    assistants = [agent for agent in agents if isinstance(agent, AssistantAgent)]
    assert len(assistants) == 50
    assert len({id(agent.llm) for agent in assistants}) == 50
    assert sum(isinstance(agent, NotesAgent) for agent in agents) == 50
    assert deployment.instances == agents  # the listener saw each one, in order
    stats = deployment.factory.stats()
    assert stats.instances_created == 100
    assert stats.instances_by_type == {"assistant": 50, "notes": 50}


async def test_concurrent_creations_never_share_an_instance(deployment: AgentDeployment) -> None:
    callers = [make_caller() for _ in range(10)]

    async def create(index: int) -> Agent:
        await asyncio.sleep(0)
        return deployment.factory.create_agent_instance("assistant", callers[index % 10])

    agents = await asyncio.gather(*(create(i) for i in range(100)))
    assert len({id(agent) for agent in agents}) == 100
    for index, agent in enumerate(agents):
        assert agent.context is callers[index % 10].context


async def test_an_instance_runs_once(deployment: AgentDeployment) -> None:
    caller = make_caller()
    sink = BufferingEventSink(caller.context)
    agent = deployment.factory.create_agent_instance("notes", caller, sink=sink)
    result = await agent.run("add first note")
    assert "added note" in result.answer
    with pytest.raises(AgentError):
        await agent.run("add second note")
    types = [event.type for event in sink.events]
    assert types[0] is EventType.AGENT_STARTED
    assert types[-1] is EventType.AGENT_COMPLETED
    assert types.count(EventType.AGENT_COMPLETED) == 1
    assert deployment.dispatchers.stats().live_dispatchers == 0
