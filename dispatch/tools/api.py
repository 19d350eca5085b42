"""The typed interface of the tool dispatcher: event models, Protocols, metrics and errors.

Events leave ``dispatch`` through :class:`RunEventSink`, a structural Protocol with one
method, ``emit(event_type, *, agent_name, payload) -> bool``. The WebSocket emitter (built
in ``websocket/emitter``, which ``dispatch`` must not import) has exactly that method and
numbers, sanitises and routes the events; :class:`dispatch.tools.sinks.BufferingEventSink`
records them in memory when there is no WebSocket. A sink is bound to one run: the run's
context says which user, thread, run and request the events belong to, so ``emit`` takes
no identifiers.

Event types and payload fields are those of the WebSocket protocol (design section 5);
the payload models here are strict and refuse unknown keys, so whatever a sink accepts
the WebSocket emitter accepts too.

Every error this package raises on purpose is a :class:`ToolDispatchError` subclass with a
stable ``error_code`` and the name of the ``grpc.StatusCode`` member an adapter maps it
to (``grpc_status_name``). Tool failures are not errors: they are
:class:`~dispatch.engine.api.ToolExecutionResult` values, exactly as the engine returns them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Annotated, Any, ClassVar, Protocol, Self, runtime_checkable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, StringConstraints

from context.api import UserExecutionContext
from dispatch.engine.api import ToolCaller, ToolDefinition, ToolExecutionResult

__all__ = [
    "DEFAULT_DISPATCHER_AGENT_NAME",
    "MAX_AGENT_NAME_LENGTH",
    "MAX_DISPATCHERS_PER_USER",
    "PAYLOAD_MODELS",
    "AgentCompletedPayload",
    "AgentErrorPayload",
    "AgentStartedPayload",
    "AgentThinkingPayload",
    "ClosableEventSink",
    "DispatcherClosedError",
    "DispatcherConstructionError",
    "DispatcherFactoryClosedError",
    "DispatcherFactoryStats",
    "DispatcherLimitExceededError",
    "DispatcherMetrics",
    "EventPayload",
    "EventSinkFactory",
    "EventType",
    "InvalidDispatcherRequestError",
    "ProgressUpdatePayload",
    "RunEventEnvelope",
    "RunEventSink",
    "ToolCompletedPayload",
    "ToolDispatchError",
    "ToolDispatcher",
    "ToolDispatcherProvider",
    "ToolExecutingPayload",
    "format_timestamp",
    "is_valid_agent_name",
]

#: At most this many live dispatchers per user (design: "at most 10 live per user").
MAX_DISPATCHERS_PER_USER = 10
#: Bound of the agent name events carry (the WebSocket envelope's bound).
MAX_AGENT_NAME_LENGTH = 128
#: The agent name of tool events when the dispatcher's creator names no agent.
DEFAULT_DISPATCHER_AGENT_NAME = "tool_dispatcher"
_MAX_NAME_LENGTH = 128


# -- errors --------------------------------------------------------------------------------


class ToolDispatchError(Exception):
    """Base of every error this package raises on purpose.

    ``error_code`` is stable (logs, API bodies, tests); ``grpc_status_name`` names the
    ``grpc.StatusCode`` member an adapter maps it to, so this module needs no gRPC import.
    Messages never name another user or quote tool arguments.
    """

    error_code: ClassVar[str] = "TOOL_DISPATCH_ERROR"
    grpc_status_name: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class DispatcherConstructionError(ToolDispatchError):
    """A dispatcher was constructed directly; only its factory may build one."""

    error_code: ClassVar[str] = "DISPATCHER_FACTORY_REQUIRED"
    grpc_status_name: ClassVar[str] = "FAILED_PRECONDITION"


class InvalidDispatcherRequestError(ToolDispatchError):
    """The factory was asked for a dispatcher with a bad caller, sink or agent name."""

    error_code: ClassVar[str] = "INVALID_DISPATCHER_REQUEST"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"


class DispatcherLimitExceededError(ToolDispatchError):
    """The user already has the maximum number of live dispatchers (other users are
    unaffected); cleaning one up frees its slot."""

    error_code: ClassVar[str] = "DISPATCHER_LIMIT_EXCEEDED"
    grpc_status_name: ClassVar[str] = "RESOURCE_EXHAUSTED"


class DispatcherClosedError(ToolDispatchError):
    """The dispatcher was cleaned up; it executes and lists nothing more."""

    error_code: ClassVar[str] = "DISPATCHER_CLOSED"
    grpc_status_name: ClassVar[str] = "FAILED_PRECONDITION"


class DispatcherFactoryClosedError(ToolDispatchError):
    """The dispatcher factory was closed (the process is shutting down)."""

    error_code: ClassVar[str] = "DISPATCHER_FACTORY_CLOSED"
    grpc_status_name: ClassVar[str] = "UNAVAILABLE"


# -- events --------------------------------------------------------------------------------


class EventType(enum.StrEnum):
    """The server events of the WebSocket protocol (design section 5)."""

    AGENT_STARTED = "agent_started"
    AGENT_THINKING = "agent_thinking"
    TOOL_EXECUTING = "tool_executing"
    TOOL_COMPLETED = "tool_completed"
    AGENT_COMPLETED = "agent_completed"
    AGENT_ERROR = "agent_error"
    PROGRESS_UPDATE = "progress_update"


def _printable_name(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    if not value.isprintable():
        raise ValueError("must not contain control characters")
    return value


_Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=_MAX_NAME_LENGTH),
    AfterValidator(_printable_name),
]


def is_valid_agent_name(value: object) -> bool:
    """Whether ``value`` can name the agent of an event (1-128 printable characters)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_AGENT_NAME_LENGTH
        and bool(value.strip())
        and value.isprintable()
    )


class EventPayload(BaseModel):
    """Base of the payload models: strict types, no unknown keys, immutable.

    ``event_type`` says which event a payload belongs to, so an emitter needs nothing but
    the payload to send it.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    event_type: ClassVar[EventType]


class AgentStartedPayload(EventPayload):
    event_type: ClassVar[EventType] = EventType.AGENT_STARTED

    status: _Name = "started"
    message: str = ""


class AgentThinkingPayload(EventPayload):
    event_type: ClassVar[EventType] = EventType.AGENT_THINKING

    thought: str
    step: int | None = Field(default=None, ge=0)
    message: str = ""


class ToolExecutingPayload(EventPayload):
    event_type: ClassVar[EventType] = EventType.TOOL_EXECUTING

    tool_name: _Name
    tool_input: dict[str, JsonValue] = Field(default_factory=dict)
    message: str = ""


class ToolCompletedPayload(EventPayload):
    event_type: ClassVar[EventType] = EventType.TOOL_COMPLETED

    tool_name: _Name
    success: bool
    result_summary: JsonValue = None
    execution_time_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    message: str = ""


class AgentCompletedPayload(EventPayload):
    event_type: ClassVar[EventType] = EventType.AGENT_COMPLETED

    success: bool = True
    result: JsonValue = None
    message: str = ""


class AgentErrorPayload(EventPayload):
    event_type: ClassVar[EventType] = EventType.AGENT_ERROR

    error_type: _Name
    error_message: str
    recoverable: bool = False
    message: str = ""


class ProgressUpdatePayload(EventPayload):
    event_type: ClassVar[EventType] = EventType.PROGRESS_UPDATE

    progress_percentage: float = Field(ge=0, le=100, allow_inf_nan=False)
    current_step: str
    message: str = ""


#: The payload model of each event type.
PAYLOAD_MODELS: Mapping[EventType, type[EventPayload]] = {
    model.event_type: model
    for model in (
        AgentStartedPayload,
        AgentThinkingPayload,
        ToolExecutingPayload,
        ToolCompletedPayload,
        AgentCompletedPayload,
        AgentErrorPayload,
        ProgressUpdatePayload,
    )
}


def format_timestamp(value: datetime) -> str:
    """ISO-8601 UTC with microseconds and a ``Z``: ``2025-01-31T12:00:00.123456Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RunEventEnvelope(BaseModel):
    """One event as a client receives it: the envelope of design section 5.

    ``seq`` starts at 1 and has no gaps within a run; ``timestamp`` is UTC. The envelope
    names no user: a client knows who it is, and an envelope never names anyone else.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: EventType
    run_id: str
    thread_id: str
    agent_name: str
    seq: int = Field(ge=1)
    timestamp: datetime
    request_id: str
    payload: dict[str, JsonValue]

    def to_wire(self) -> dict[str, Any]:
        """The protocol's JSON object, keys in protocol order, timestamp as ISO-8601 UTC."""
        return {
            "type": self.type.value,
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "agent_name": self.agent_name,
            "seq": self.seq,
            "timestamp": format_timestamp(self.timestamp),
            "request_id": self.request_id,
            "payload": self.payload,
        }


@runtime_checkable
class RunEventSink(Protocol):
    """Where one run's events go. Bound to the run's context by whoever built it.

    ``emit`` returns whether the event was accepted; ``False`` (no live connection, an
    invalid event, a closed sink) never stops the work that produced the event.
    """

    async def emit(
        self, event_type: str, *, agent_name: str, payload: Mapping[str, object]
    ) -> bool: ...


@runtime_checkable
class ClosableEventSink(RunEventSink, Protocol):
    """A sink that holds resources until its run ends (the WebSocket emitter does)."""

    async def close(self) -> None: ...


#: Builds the sink of one run: ``(run context, agent name) -> sink``.
EventSinkFactory = Callable[[UserExecutionContext, str], RunEventSink]


# -- metrics -------------------------------------------------------------------------------


class DispatcherMetrics(BaseModel):
    """Counters of one dispatcher (one request of one user)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dispatcher_id: str
    agent_name: str
    closed: bool
    tools_executed: int = Field(ge=0)
    successful_executions: int = Field(ge=0)
    failed_executions: int = Field(ge=0)
    calls_by_status: dict[str, int] = Field(default_factory=dict)
    total_execution_time_ms: float = Field(ge=0)
    #: Events the sink accepted.
    events_emitted: int = Field(ge=0)
    #: Events the sink refused (returned False) or failed on (raised).
    events_undelivered: int = Field(ge=0)


class DispatcherFactoryStats(BaseModel):
    """A snapshot of a factory's dispatchers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    live_dispatchers: int = Field(ge=0)
    dispatchers_per_user: dict[str, int] = Field(default_factory=dict)
    created: int = Field(ge=0)
    rejected: int = Field(ge=0)
    cleaned_up: int = Field(ge=0)
    #: Dispatchers garbage-collected without cleanup (their slots were freed then).
    leaked: int = Field(ge=0)
    max_dispatchers_per_user: int = Field(ge=1)
    closed: bool


# -- Protocols -----------------------------------------------------------------------------


@runtime_checkable
class ToolDispatcher(Protocol):
    """The request-scoped front door for tool calls of one caller.

    Every :meth:`execute_tool` emits exactly one ``tool_executing`` before and one
    ``tool_completed`` after the call, also when the tool fails, is denied or times out.
    After :meth:`cleanup` every method raises :class:`DispatcherClosedError`.
    """

    @property
    def caller(self) -> ToolCaller: ...

    @property
    def closed(self) -> bool: ...

    async def execute_tool(
        self,
        name: str,
        params: Mapping[str, object] | None = None,
        *,
        tool_call_id: str | None = None,
    ) -> ToolExecutionResult: ...

    async def list_tools(self) -> Sequence[ToolDefinition]: ...

    def metrics(self) -> DispatcherMetrics: ...

    async def cleanup(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class ToolDispatcherProvider(Protocol):
    """Builds dispatchers: one per request context, for one verified caller."""

    def create_for_context(
        self, caller: ToolCaller, sink: RunEventSink, *, agent_name: str | None = None
    ) -> ToolDispatcher: ...
