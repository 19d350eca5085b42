"""The typed interface of the emitter package: event models, Protocols and errors.

An event travels in two forms:

* :class:`EventEnvelope` is what a client receives, exactly the envelope of the WebSocket
  protocol: ``{type, run_id, thread_id, agent_name, seq, timestamp, request_id, payload}``
  (:meth:`EventEnvelope.to_wire`). It carries no ``user_id``: the client knows who it is,
  and an envelope never names anyone else.
* :class:`RoutedEvent` is the server-side form: the envelope plus the ``user_id`` that owns
  it, side by side. Routing decisions use the owner; the owner is never serialised into
  what a client receives.

Before it is numbered an event is an :class:`EventDraft` (the envelope without ``seq``);
the replay buffer numbers it, gaplessly per run, as it stores it.

Every failure is an :class:`EmitterError` subclass with a stable ``error_code`` and the
name of the gRPC status it maps to (``grpc_status_name``), so this module needs no gRPC
import. The emitter itself never raises into an agent: it returns ``False`` and logs the
error code; the errors surface from the replay buffer (for example to the gateway serving
``resume``) and in logs and statistics.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Protocol, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    model_validator,
)

from context.errors import InvalidContextError
from context.execution_context import UserExecutionContext, check_context_id

__all__ = [
    "MAX_AGENT_NAME_LENGTH",
    "MAX_NAME_LENGTH",
    "PAYLOAD_MODELS",
    "WIRE_FIELDS",
    "AgentCompletedPayload",
    "AgentErrorPayload",
    "AgentName",
    "AgentStartedPayload",
    "AgentThinkingPayload",
    "ContextID",
    "DeliveryFailedError",
    "EmitterClosedError",
    "EmitterError",
    "EmitterFactory",
    "EmitterStats",
    "EventDelivery",
    "EventDraft",
    "EventEnvelope",
    "EventOwnershipError",
    "EventPayload",
    "EventType",
    "InvalidEventError",
    "InvalidReplayRequestError",
    "ProgressUpdatePayload",
    "ReplayBuffer",
    "ReplayNotFoundError",
    "ReplayUnavailableError",
    "RoutedEvent",
    "ToolCompletedPayload",
    "ToolExecutingPayload",
    "UserWebSocketEmitter",
    "format_timestamp",
    "validate_context_id",
]

MAX_AGENT_NAME_LENGTH = 128
#: Bound of short identifying names inside payloads (tool name, error type, step name).
MAX_NAME_LENGTH = 128


# -- errors --------------------------------------------------------------------------------


class EmitterError(Exception):
    """Base class of every error raised on purpose by the emitter package.

    ``error_code`` is stable and machine-readable; ``grpc_status_name`` names the
    ``grpc.StatusCode`` member an adapter maps the error to. Messages never quote payload
    values or another user's identifiers.
    """

    error_code: ClassVar[str] = "EMITTER_ERROR"
    grpc_status_name: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidEventError(EmitterError):
    """An event's type, agent name or payload does not match the protocol."""

    error_code: ClassVar[str] = "INVALID_EVENT"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"


class InvalidReplayRequestError(EmitterError):
    """A replay request is malformed (a run ID that cannot be an ID, a negative seq...)."""

    error_code: ClassVar[str] = "INVALID_REPLAY_REQUEST"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"


class ReplayNotFoundError(EmitterError):
    """The caller has no buffered run with that ID.

    Raised alike for a run that never existed, one that expired and one that belongs to
    another user, so the error reveals nothing about other users' runs.
    """

    error_code: ClassVar[str] = "RUN_NOT_FOUND"
    grpc_status_name: ClassVar[str] = "NOT_FOUND"


class EventOwnershipError(EmitterError):
    """An event was about to reach a user other than the one whose request produced it."""

    error_code: ClassVar[str] = "EVENT_OWNERSHIP_VIOLATION"
    grpc_status_name: ClassVar[str] = "PERMISSION_DENIED"


class EmitterClosedError(EmitterError):
    """The emitter was closed (its request ended); it emits nothing more."""

    error_code: ClassVar[str] = "EMITTER_CLOSED"
    grpc_status_name: ClassVar[str] = "FAILED_PRECONDITION"


class ReplayUnavailableError(EmitterError):
    """The replay buffer's store (Redis) failed or could not be reached."""

    error_code: ClassVar[str] = "REPLAY_UNAVAILABLE"
    grpc_status_name: ClassVar[str] = "UNAVAILABLE"


class DeliveryFailedError(EmitterError):
    """The event was stored for replay but handing it to live delivery failed."""

    error_code: ClassVar[str] = "DELIVERY_FAILED"
    grpc_status_name: ClassVar[str] = "UNAVAILABLE"


# -- field types ---------------------------------------------------------------------------


def validate_context_id(value: str, field: str = "id") -> str:
    """``value`` if it is acceptable as a context ID (see ``check_context_id``).

    Raises ``ValueError`` (which pydantic reports as a validation error) otherwise.
    """
    try:
        return check_context_id(value, field)
    except InvalidContextError as error:
        raise ValueError(error.message) from None


def _context_id(value: str) -> str:
    return validate_context_id(value)


def _printable_name(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    if not value.isprintable():
        raise ValueError("must not contain control characters")
    return value


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware")
    return value.astimezone(UTC)


def format_timestamp(value: datetime) -> str:
    """ISO-8601 UTC with microseconds and a ``Z``: ``2025-01-31T12:00:00.123456Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: A user, thread, run or request ID as a context accepts it.
ContextID = Annotated[str, AfterValidator(_context_id)]
#: The name of the agent an event comes from.
AgentName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_AGENT_NAME_LENGTH),
    AfterValidator(_printable_name),
]
_Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH),
    AfterValidator(_printable_name),
]
_UtcTimestamp = Annotated[
    datetime,
    AfterValidator(_as_utc),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
]


# -- event types and payloads --------------------------------------------------------------


class EventType(enum.StrEnum):
    """The server events of the WebSocket protocol."""

    AGENT_STARTED = "agent_started"
    AGENT_THINKING = "agent_thinking"
    TOOL_EXECUTING = "tool_executing"
    TOOL_COMPLETED = "tool_completed"
    AGENT_COMPLETED = "agent_completed"
    AGENT_ERROR = "agent_error"
    PROGRESS_UPDATE = "progress_update"


class EventPayload(BaseModel):
    """Base of the payload models: strict types, no unknown keys, immutable.

    Free text (messages, thoughts) has no length bound here: the sanitiser cuts long
    strings, so an over-long thought is shortened rather than lost.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AgentStartedPayload(EventPayload):
    status: _Name = "started"
    message: str = ""


class AgentThinkingPayload(EventPayload):
    thought: str
    step: int | None = Field(default=None, ge=0)
    message: str = ""


class ToolExecutingPayload(EventPayload):
    tool_name: _Name
    tool_input: dict[str, JsonValue] = Field(default_factory=dict)
    message: str = ""


class ToolCompletedPayload(EventPayload):
    tool_name: _Name
    success: bool
    result_summary: JsonValue = None
    execution_time_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    message: str = ""


class AgentCompletedPayload(EventPayload):
    success: bool = True
    result: JsonValue = None
    message: str = ""


class AgentErrorPayload(EventPayload):
    error_type: _Name
    error_message: str
    recoverable: bool = False
    message: str = ""


class ProgressUpdatePayload(EventPayload):
    progress_percentage: float = Field(ge=0, le=100, allow_inf_nan=False)
    current_step: str
    message: str = ""


#: The payload model of each event type.
PAYLOAD_MODELS: Mapping[EventType, type[EventPayload]] = {
    EventType.AGENT_STARTED: AgentStartedPayload,
    EventType.AGENT_THINKING: AgentThinkingPayload,
    EventType.TOOL_EXECUTING: ToolExecutingPayload,
    EventType.TOOL_COMPLETED: ToolCompletedPayload,
    EventType.AGENT_COMPLETED: AgentCompletedPayload,
    EventType.AGENT_ERROR: AgentErrorPayload,
    EventType.PROGRESS_UPDATE: ProgressUpdatePayload,
}

#: The keys of a wire envelope, in the order they are sent.
WIRE_FIELDS: tuple[str, ...] = (
    "type",
    "run_id",
    "thread_id",
    "agent_name",
    "seq",
    "timestamp",
    "request_id",
    "payload",
)


# -- envelopes -----------------------------------------------------------------------------


class _EventFields(BaseModel):
    """The fields an event has before and after numbering, and their checks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: EventType
    run_id: ContextID
    thread_id: ContextID
    agent_name: AgentName
    timestamp: _UtcTimestamp
    request_id: ContextID
    payload: dict[str, JsonValue]

    @model_validator(mode="after")
    def _payload_matches_type(self) -> Self:
        try:
            PAYLOAD_MODELS[self.type].model_validate(self.payload)
        except ValidationError as error:
            places = ", ".join(
                ".".join(str(part) for part in detail["loc"]) or "payload"
                for detail in error.errors(include_input=False)
            )
            raise ValueError(f"payload does not match {self.type.value}: {places}") from None
        return self


class EventDraft(_EventFields):
    """An event ready to be numbered: the envelope without ``seq``."""

    def sequenced(self, seq: int) -> EventEnvelope:
        """The envelope of this event with sequence number ``seq``."""
        return EventEnvelope.model_validate({**dict(self), "seq": seq})


class EventEnvelope(_EventFields):
    """One server event exactly as a client receives it (see the module docstring)."""

    seq: int = Field(ge=1, strict=True)

    def to_wire(self) -> dict[str, Any]:
        """The protocol's JSON object: exactly :data:`WIRE_FIELDS`, in that order."""
        dumped = self.model_dump(mode="json")
        return {name: dumped[name] for name in WIRE_FIELDS}

    def to_json(self) -> str:
        """:meth:`to_wire` as compact JSON text, ready for a WebSocket text frame."""
        return json.dumps(self.to_wire(), separators=(",", ":"), ensure_ascii=False)

    def draft(self) -> EventDraft:
        """This event without its sequence number."""
        return EventDraft.model_validate(self.model_dump(exclude={"seq"}))


class RoutedEvent(BaseModel):
    """An envelope and the user who owns it: the server-side form of an event.

    The owner is kept beside the envelope, never inside it, so what a client receives
    (``envelope.to_wire()``) cannot name a user.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: ContextID
    envelope: EventEnvelope


class EmitterStats(BaseModel):
    """Counters of one emitter. Rejected/refused/failed events were not delivered."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    closed: bool
    last_seq: int
    events_emitted: int
    connections_reached: int
    events_without_listener: int
    events_rejected: int
    events_refused: int
    events_failed: int
    emitted_by_type: dict[str, int]
    errors_by_code: dict[str, int]


# -- Protocols -----------------------------------------------------------------------------


class EventDelivery(Protocol):
    """Where an emitter hands numbered events for live delivery (the router)."""

    async def deliver(self, user_id: str, envelope: EventEnvelope) -> int:
        """Send ``envelope`` to ``user_id``'s live connections; return how many got it."""
        ...


class ReplayBuffer(Protocol):
    """Numbers and keeps each run's recent events so a reconnecting client can resume.

    Runs are kept per ``(user_id, run_id)``: a user can only ever read back the runs
    stored under their own user ID.
    """

    async def append(self, user_id: str, run_id: str, draft: EventDraft) -> EventEnvelope:
        """Give ``draft`` the next ``seq`` of the run and store it, as one atomic step.

        Sequence numbers start at 1 and have no gaps, also across concurrent callers and
        across processes sharing the store. Raises :class:`InvalidEventError` when
        ``draft.run_id`` is not ``run_id``, :class:`ReplayUnavailableError` when the store
        fails (then no number was used).
        """
        ...

    async def read_after(
        self, user_id: str, run_id: str, after_seq: int, *, limit: int | None = None
    ) -> list[EventEnvelope]:
        """The run's retained events with ``seq > after_seq``, in order (at most ``limit``).

        Raises :class:`ReplayNotFoundError` when ``user_id`` has no such run (including
        when the run is another user's) and :class:`InvalidReplayRequestError` for a
        malformed run ID or a negative ``after_seq``. Events trimmed by the length bound
        are missing at the start; the first returned ``seq`` then exceeds
        ``after_seq + 1``.
        """
        ...

    async def last_seq(self, user_id: str, run_id: str) -> int:
        """The highest ``seq`` given out for the user's run; 0 if there is none."""
        ...

    async def close(self) -> None:
        """Release the store's resources."""
        ...


class UserWebSocketEmitter(Protocol):
    """Emits one request's events: validated, sanitised, numbered, buffered, delivered.

    Every method returns whether the event was accepted (stored for replay and handed to
    delivery) and never raises into the caller.
    """

    @property
    def context(self) -> UserExecutionContext: ...

    @property
    def closed(self) -> bool: ...

    async def emit(
        self, event_type: str, *, agent_name: str, payload: Mapping[str, object]
    ) -> bool: ...

    async def notify_agent_started(
        self, agent_name: str, *, message: str | None = None, status: str = "started"
    ) -> bool: ...

    async def notify_agent_thinking(
        self, agent_name: str, thought: str, *, step: int | None = None, message: str | None = None
    ) -> bool: ...

    async def notify_tool_executing(
        self,
        agent_name: str,
        tool_name: str,
        tool_input: Mapping[str, object] | None = None,
        *,
        message: str | None = None,
    ) -> bool: ...

    async def notify_tool_completed(
        self,
        agent_name: str,
        tool_name: str,
        *,
        success: bool,
        result_summary: object = None,
        execution_time_ms: float | None = None,
        message: str | None = None,
    ) -> bool: ...

    async def notify_agent_completed(
        self,
        agent_name: str,
        result: object = None,
        *,
        success: bool = True,
        message: str | None = None,
    ) -> bool: ...

    async def notify_agent_error(
        self,
        agent_name: str,
        error_type: str,
        error_message: str,
        *,
        recoverable: bool = False,
        message: str | None = None,
    ) -> bool: ...

    async def notify_progress_update(
        self,
        agent_name: str,
        progress_percentage: float,
        current_step: str,
        *,
        message: str | None = None,
    ) -> bool: ...

    async def close(self) -> None: ...

    def stats(self) -> EmitterStats: ...


class EmitterFactory(Protocol):
    """Builds the emitter of one request; configured once by the composition root."""

    def create_emitter(self, context: UserExecutionContext) -> UserWebSocketEmitter: ...
