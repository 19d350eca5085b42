"""What every agent type shares: its dependencies, its registration and the run template.

:class:`AgentDependencies` is everything one instance may use, all of it bound to one
caller (a verified user and the run's context): the run's event emitter, a tool dispatcher
factory, an LLM manager factory and the settings. An instance builds its own LLM manager
and its own dispatcher from them, so nothing an instance holds is shared with another.

:class:`BaseAgent` runs the template every agent follows: ``agent_started`` → the type's
own work (:meth:`BaseAgent.work`) with a dispatcher of its own → ``agent_completed``; an
exception ends the run with one ``agent_error`` (classified by
:func:`~dispatch.agents.failures.classify_failure`) and is re-raised; a cancellation ends
it with the stop reason the canceller recorded. An instance runs once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from context.api import UserExecutionContext
from dispatch.agents.api import (
    Agent,
    AgentError,
    AgentResult,
    AgentSettings,
    LLMManagerProvider,
)
from dispatch.agents.events import AgentEvents
from dispatch.agents.failures import classify_failure
from dispatch.engine.api import ToolCaller
from dispatch.tools.api import RunEventSink, ToolDispatcher, ToolDispatcherProvider

__all__ = ["AgentDependencies", "AgentType", "BaseAgent"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentDependencies:
    """What one agent instance is built with (see the module docstring)."""

    name: str
    instance_id: str
    caller: ToolCaller
    events: AgentEvents
    sink: RunEventSink
    tools: ToolDispatcherProvider
    llm: LLMManagerProvider
    settings: AgentSettings


@dataclass(frozen=True, slots=True)
class AgentType:
    """A registered kind of agent: its name, what it does, and how to build an instance."""

    name: str
    description: str
    build: Callable[[AgentDependencies], Agent]


class BaseAgent:
    """The run template of every agent type; subclasses implement :meth:`work`."""

    def __init__(self, deps: AgentDependencies) -> None:
        self._deps = deps
        self._ran = False
        ctx = deps.caller.context
        self._log = log.bind(
            user_id=ctx.user_id,
            run_id=ctx.run_id,
            request_id=ctx.request_id,
            agent=deps.name,
            instance_id=deps.instance_id,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(instance_id={self._deps.instance_id!r}, "
            f"run_id={self.context.run_id!r})"
        )

    @property
    def name(self) -> str:
        return self._deps.name

    @property
    def instance_id(self) -> str:
        return self._deps.instance_id

    @property
    def context(self) -> UserExecutionContext:
        return self._deps.caller.context

    @property
    def caller(self) -> ToolCaller:
        return self._deps.caller

    @property
    def events(self) -> AgentEvents:
        return self._deps.events

    @property
    def settings(self) -> AgentSettings:
        return self._deps.settings

    async def run(self, message: str) -> AgentResult:
        """Run the template (see the module docstring). Raises what ended the run."""
        if self._ran:
            raise AgentError("an agent instance runs once; create a new one for a new run")
        self._ran = True
        events = self.events
        try:
            await events.started(message=f"{self.name} started")
            dispatcher = self._deps.tools.create_for_context(
                self._deps.caller, self._deps.sink, agent_name=self.name
            )
            async with dispatcher:
                result = await self.work(message, dispatcher)
        except asyncio.CancelledError:
            await events.error_for_stop()
            raise
        except Exception as exc:
            failure = classify_failure(exc)
            if failure.error_code is None:
                self._log.error("agent_failed", exc_type=type(exc).__name__, exc_info=True)
            else:
                self._log.info("agent_failed", error_code=failure.error_code)
            await events.error(failure.error_type, failure.message, recoverable=failure.recoverable)
            raise
        await events.completed(result, message=f"{self.name} completed")
        return result

    async def work(self, message: str, dispatcher: ToolDispatcher) -> AgentResult:
        """The agent type's own work; tool calls go through ``dispatcher``."""
        raise NotImplementedError
