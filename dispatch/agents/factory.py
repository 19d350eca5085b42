"""``AgentInstanceFactory``: a fresh agent instance per run, never shared or cached.

The composition root builds one factory and configures it exactly once with what agents
are made of: the LLM manager factory, the tool dispatcher factory, the data access factory
and the event-sink factory ``(run context, agent name) -> RunEventSink``. A missing or
unusable dependency is a :class:`~dispatch.agents.api.MissingDependencyError` at
configure time, not a surprise in the middle of a run. There is no module-level instance.

:meth:`AgentInstanceFactory.create_agent_instance` builds a new object every time: its own
event emitter, its own LLM manager (bound to the run's context) and, when it runs, its own
tool dispatcher. The factory keeps no reference that could hand an instance to another
request; it only counts instances and tracks them weakly for statistics.
"""

from __future__ import annotations

import secrets
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import cast

import structlog

from context.api import UserExecutionContext
from data.api import DataAccessFactory
from dispatch.agents.api import (
    Agent,
    AgentFactoryStats,
    AgentSettings,
    FactoryAlreadyConfiguredError,
    FactoryNotConfiguredError,
    InstanceListener,
    InvalidAgentCallerError,
    LLMManagerProvider,
    MissingDependencyError,
    UnknownAgentError,
    is_valid_agent_type_name,
)
from dispatch.agents.assistant import ASSISTANT_AGENT
from dispatch.agents.base import AgentDependencies, AgentType
from dispatch.agents.events import AgentEvents
from dispatch.agents.notes import NOTES_AGENT
from dispatch.engine.api import ToolCaller
from dispatch.tools.api import EventSinkFactory, RunEventSink, ToolDispatcherProvider

__all__ = ["BUILTIN_AGENT_TYPES", "AgentInstanceFactory"]

log = structlog.get_logger(__name__)

#: The agent types every factory offers.
BUILTIN_AGENT_TYPES: tuple[AgentType, ...] = (ASSISTANT_AGENT, NOTES_AGENT)


def _require(value: object, dependency: str, method: str | None) -> None:
    if value is None:
        raise MissingDependencyError(
            f"the agent factory needs {dependency}; none was given", dependency=dependency
        )
    usable = callable(value) if method is None else callable(getattr(value, method, None))
    if not usable:
        what = "be callable" if method is None else f"provide {method}()"
        raise MissingDependencyError(
            f"{dependency} must {what}; got {type(value).__name__}", dependency=dependency
        )


class _Configuration:
    __slots__ = ("data", "listener", "llm", "settings", "sinks", "tools")

    def __init__(
        self,
        *,
        llm: LLMManagerProvider,
        tools: ToolDispatcherProvider,
        data: DataAccessFactory,
        sinks: EventSinkFactory,
        settings: AgentSettings,
        listener: InstanceListener | None,
    ) -> None:
        self.llm = llm
        self.tools = tools
        self.data = data
        self.sinks = sinks
        self.settings = settings
        self.listener = listener


class AgentInstanceFactory:
    """Builds agent instances; see the module docstring. Configure once, then use."""

    def __init__(self) -> None:
        self._config: _Configuration | None = None
        self._types: dict[str, AgentType] = {kind.name: kind for kind in BUILTIN_AGENT_TYPES}
        self._created: Counter[str] = Counter()
        self._live: weakref.WeakSet[Agent] = weakref.WeakSet()

    def configure(
        self,
        *,
        llm_factory: LLMManagerProvider | None = None,
        tool_dispatcher_factory: ToolDispatcherProvider | None = None,
        data_factory: DataAccessFactory | None = None,
        event_sink_factory: EventSinkFactory | None = None,
        settings: AgentSettings | None = None,
        agent_types: Iterable[AgentType] = (),
        instance_listener: InstanceListener | None = None,
    ) -> AgentInstanceFactory:
        """Set the dependencies (all four required) once; returns the factory.

        ``agent_types`` adds agent types beside the built-in ``assistant`` and ``notes``.
        Raises :class:`MissingDependencyError` for a missing or unusable dependency and
        :class:`FactoryAlreadyConfiguredError` when called again.
        """
        if self._config is not None:
            raise FactoryAlreadyConfiguredError("the agent factory is already configured")
        _require(llm_factory, "llm_factory", "create_for_context")
        _require(tool_dispatcher_factory, "tool_dispatcher_factory", "create_for_context")
        _require(data_factory, "data_factory", "create_user_context")
        _require(event_sink_factory, "event_sink_factory", None)
        types = dict(self._types)
        for kind in agent_types:
            if not is_valid_agent_type_name(kind.name):
                raise MissingDependencyError(
                    f"agent type name {kind.name[:64]!r} is not a valid name",
                    dependency="agent_types",
                )
            if kind.name in types:
                raise MissingDependencyError(
                    f"agent type {kind.name!r} is registered twice", dependency="agent_types"
                )
            types[kind.name] = kind
        self._types = types
        self._config = _Configuration(
            llm=cast(LLMManagerProvider, llm_factory),
            tools=cast(ToolDispatcherProvider, tool_dispatcher_factory),
            data=cast(DataAccessFactory, data_factory),
            sinks=cast(EventSinkFactory, event_sink_factory),
            settings=settings or AgentSettings(),
            listener=instance_listener,
        )
        log.info("agent_factory_configured", agent_types=sorted(types))
        return self

    # -- configuration -----------------------------------------------------------------------

    def _configuration(self) -> _Configuration:
        if self._config is None:
            raise FactoryNotConfiguredError("configure the agent factory before using it")
        return self._config

    @property
    def configured(self) -> bool:
        return self._config is not None

    @property
    def settings(self) -> AgentSettings:
        return self._configuration().settings

    @property
    def data_factory(self) -> DataAccessFactory:
        return self._configuration().data

    @property
    def agent_types(self) -> Mapping[str, AgentType]:
        return dict(self._types)

    def has_agent(self, name: object) -> bool:
        return isinstance(name, str) and name in self._types

    # -- building ------------------------------------------------------------------------------

    def create_event_sink(self, ctx: UserExecutionContext, agent_name: str) -> RunEventSink:
        """The sink of a run, from the configured event-sink factory."""
        if not isinstance(cast(object, ctx), UserExecutionContext):
            raise InvalidAgentCallerError("an event sink needs the run's UserExecutionContext")
        return self._configuration().sinks(ctx, agent_name)

    def create_agent_instance(
        self, agent_name: str, caller: ToolCaller, *, sink: RunEventSink | None = None
    ) -> Agent:
        """A new instance of ``agent_name`` for ``caller`` (a verified user and the run's
        context, ``caller.context``).

        ``sink`` is the run's event sink; when omitted one is made by the configured
        event-sink factory. Raises :class:`FactoryNotConfiguredError`,
        :class:`InvalidAgentCallerError` or :class:`UnknownAgentError`.
        """
        config = self._configuration()
        if not isinstance(cast(object, caller), ToolCaller):
            raise InvalidAgentCallerError(
                f"an agent needs a verified ToolCaller, got {type(caller).__name__}"
            )
        raw_name: object = agent_name
        kind = self._types.get(agent_name) if isinstance(raw_name, str) else None
        if kind is None:
            shown = repr(raw_name)[:64]
            raise UnknownAgentError(
                f"no agent named {shown}; known: {', '.join(sorted(self._types))}"
            )
        run_sink = sink if sink is not None else config.sinks(caller.context, kind.name)
        agent = kind.build(
            AgentDependencies(
                name=kind.name,
                instance_id=f"agt_{secrets.token_hex(10)}",
                caller=caller,
                events=AgentEvents(run_sink, agent_name=kind.name),
                sink=run_sink,
                tools=config.tools,
                llm=config.llm,
                settings=config.settings,
            )
        )
        self._created[kind.name] += 1
        self._live.add(agent)
        if config.listener is not None:
            config.listener(agent)
        return agent

    def stats(self) -> AgentFactoryStats:
        return AgentFactoryStats(
            configured=self._config is not None,
            agent_types=tuple(sorted(self._types)),
            instances_created=sum(self._created.values()),
            instances_by_type=dict(self._created),
            live_instances=len(self._live),
        )
