"""The per-request emitter: :class:`RequestEmitter` and its factory.

One emitter serves one request. Its user, thread, run and request IDs come from the
request's :class:`~context.UserExecutionContext` and from nowhere else: no method takes
an ID, so no caller can aim an event at another user or run.

Emitting an event, step by step:

1. refuse if the emitter is closed, or if it is called inside another user's context
   scope (an emitter that leaked out of its request; logged as a security event);
2. validate the payload against its event type's model (:data:`api.PAYLOAD_MODELS`);
3. sanitise it (:mod:`websocket.emitter.sanitize`);
4. number and store it in the replay buffer: the buffer assigns the run's next ``seq``
   as it stores the event, so a reconnecting client can always resume from what it saw;
5. hand it to live delivery (the router) for the context's user, checking once more that
   the owner is the context's user.

Steps 4 and 5 run under one lock per emitter, so this emitter's events reach delivery in
``seq`` order. Nothing raises into the agent: each method returns ``True`` when the event
was stored and handed to delivery (whether or not a connection was open: it stays
replayable) and ``False`` otherwise, with a structured log line and a counter in
:meth:`RequestEmitter.stats`. An event whose delivery failed after it was stored returns
``False`` but remains replayable.
"""

from __future__ import annotations

import asyncio
import math
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import structlog
from pydantic import JsonValue, ValidationError
from pydantic_core import to_jsonable_python

from context.current import get_current_context
from context.errors import describe_value
from context.execution_context import UserExecutionContext
from websocket.emitter.api import (
    PAYLOAD_MODELS,
    DeliveryFailedError,
    EmitterClosedError,
    EmitterError,
    EmitterStats,
    EventDelivery,
    EventDraft,
    EventEnvelope,
    EventOwnershipError,
    EventType,
    InvalidEventError,
    ReplayBuffer,
    ReplayUnavailableError,
    RoutedEvent,
)
from websocket.emitter.sanitize import PayloadSanitizer

__all__ = ["RequestEmitter", "RequestEmitterFactory", "raised_at", "to_json_value"]

log = structlog.get_logger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _opaque(value: object) -> str:
    # Never str() an unknown object into an event: its text may hold anything.
    return f"<{type(value).__name__}>"


def raised_at(error: BaseException) -> str:
    """``file:line`` where ``error`` was raised, for logs that must not carry locals."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown"
    last = frames[-1]
    return f"{last.filename}:{last.lineno}"


def to_json_value(value: object) -> JsonValue:
    """``value`` as plain JSON data (models, dataclasses, datetimes, sets... converted).

    Objects with no JSON form become ``"<TypeName>"``. Used by the typed helpers, which
    accept arbitrary tool inputs and results; :meth:`RequestEmitter.emit` itself accepts
    JSON data only.
    """
    converted: JsonValue = to_jsonable_python(value, fallback=_opaque)
    return converted


def _field_locations(error: ValidationError) -> list[str]:
    # Locations and error types only: the offending values may be secrets.
    return [
        ".".join(str(part) for part in detail["loc"]) + f" ({detail['type']})"
        for detail in error.errors(include_input=False, include_url=False)
    ]


class RequestEmitter:
    """The :class:`~websocket.emitter.api.UserWebSocketEmitter` of one request.

    ``delivery`` receives numbered events (the router); ``replay`` numbers and keeps them.
    Build it with :class:`RequestEmitterFactory` in services.
    """

    def __init__(
        self,
        context: UserExecutionContext,
        *,
        delivery: EventDelivery,
        replay: ReplayBuffer,
        sanitizer: PayloadSanitizer | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not isinstance(context, UserExecutionContext):
            raise TypeError(f"an emitter needs a UserExecutionContext, got {_opaque(context)}")
        self._context = context
        self._delivery = delivery
        self._replay = replay
        self._sanitizer = sanitizer or PayloadSanitizer()
        self._clock = clock
        self._lock = asyncio.Lock()
        self._closed = False
        self._last_seq = 0
        self._emitted = 0
        self._connections_reached = 0
        self._without_listener = 0
        self._rejected = 0
        self._refused = 0
        self._failed = 0
        self._by_type: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._log = log.bind(
            user_id=context.user_id,
            thread_id=context.thread_id,
            run_id=context.run_id,
            request_id=context.request_id,
        )

    def __repr__(self) -> str:
        return f"RequestEmitter(run_id={self._context.run_id!r}, closed={self._closed})"

    @property
    def context(self) -> UserExecutionContext:
        return self._context

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the generic entry point -------------------------------------------------------------

    async def emit(
        self, event_type: str, *, agent_name: str, payload: Mapping[str, object]
    ) -> bool:
        """Validate, sanitise, number, buffer and deliver one event; see the module doc."""
        try:
            envelope, reached = await self._emit(event_type, agent_name, payload)
        except EmitterError as error:
            self._record_error(error, event_type)
            return False
        except Exception as error:
            self._failed += 1
            self._errors["INTERNAL"] += 1
            # Where, not the traceback: rendered tracebacks can show local variables, and
            # those hold the payload.
            self._log.error(
                "emitter.emit_failed",
                event_type=describe_value(event_type),
                error_type=type(error).__name__,
                raised_at=raised_at(error),
            )
            return False
        self._emitted += 1
        self._by_type[envelope.type.value] += 1
        self._connections_reached += reached
        if reached == 0:
            self._without_listener += 1
        return True

    async def _emit(
        self, event_type: str, agent_name: str, payload: Mapping[str, object]
    ) -> tuple[EventEnvelope, int]:
        if self._closed:
            raise EmitterClosedError("the emitter is closed; its request has ended")
        self._check_caller()
        kind, clean = self._validated_payload(event_type, payload)
        async with self._lock:
            if self._closed:
                raise EmitterClosedError("the emitter is closed; its request has ended")
            draft = self._draft(kind, agent_name, clean)
            envelope = await self._store(draft)
            reached = await self._deliver(
                RoutedEvent(user_id=self._context.user_id, envelope=envelope)
            )
        return envelope, reached

    def _check_caller(self) -> None:
        current = get_current_context()
        if current is not None and current.user_id != self._context.user_id:
            raise EventOwnershipError("this emitter belongs to another user's request")

    def _validated_payload(
        self, event_type: object, payload: object
    ) -> tuple[EventType, dict[str, JsonValue]]:
        if not isinstance(event_type, str):
            raise InvalidEventError(f"event type must be a str, got {describe_value(event_type)}")
        try:
            kind = EventType(event_type)
        except ValueError:
            raise InvalidEventError(f"unknown event type {describe_value(event_type)}") from None
        if not isinstance(payload, Mapping):
            raise InvalidEventError(f"payload must be a mapping, got {describe_value(payload)}")
        try:
            model = PAYLOAD_MODELS[kind].model_validate(dict(payload))
        except ValidationError as error:
            raise InvalidEventError(
                f"invalid {kind.value} payload: " + "; ".join(_field_locations(error))
            ) from None
        return kind, self._sanitizer.sanitize_payload(model.model_dump())

    def _draft(self, kind: EventType, agent_name: str, payload: dict[str, JsonValue]) -> EventDraft:
        ctx = self._context
        try:
            return EventDraft(
                type=kind,
                run_id=ctx.run_id,
                thread_id=ctx.thread_id,
                agent_name=agent_name,
                timestamp=self._clock(),
                request_id=ctx.request_id,
                payload=payload,
            )
        except ValidationError as error:
            raise InvalidEventError(
                f"invalid {kind.value} event: " + "; ".join(_field_locations(error))
            ) from None

    async def _store(self, draft: EventDraft) -> EventEnvelope:
        try:
            envelope = await self._replay.append(self._context.user_id, self._context.run_id, draft)
        except EmitterError:
            raise
        except Exception as error:
            raise ReplayUnavailableError("the replay buffer failed to store the event") from error
        if envelope.run_id != self._context.run_id or envelope.thread_id != self._context.thread_id:
            raise EventOwnershipError("the replay buffer returned an event of another run")
        self._last_seq = max(self._last_seq, envelope.seq)
        return envelope

    async def _deliver(self, routed: RoutedEvent) -> int:
        if routed.user_id != self._context.user_id:
            raise EventOwnershipError("refusing to deliver an event to another user")
        try:
            return await self._delivery.deliver(routed.user_id, routed.envelope)
        except EmitterError:
            raise
        except Exception as error:
            raise DeliveryFailedError(
                f"event seq {routed.envelope.seq} was stored but live delivery failed"
            ) from error

    def _record_error(self, error: EmitterError, event_type: object) -> None:
        self._errors[error.error_code] += 1
        fields: dict[str, object] = {
            "error_code": error.error_code,
            "event_type": describe_value(event_type),
            "reason": error.message,
        }
        if isinstance(error, InvalidEventError):
            self._rejected += 1
            self._log.warning("emitter.event_rejected", **fields)
        elif isinstance(error, EventOwnershipError):
            self._refused += 1
            self._log.error("emitter.event_refused", security_event=True, **fields)
        elif isinstance(error, EmitterClosedError):
            self._refused += 1
            self._log.warning("emitter.event_after_close", **fields)
        else:
            self._failed += 1
            cause = error.__cause__
            self._log.error(
                "emitter.event_failed",
                cause=type(cause).__name__ if cause is not None else None,
                **fields,
            )

    # -- typed helpers ---------------------------------------------------------------------

    async def notify_agent_started(
        self, agent_name: str, *, message: str | None = None, status: str = "started"
    ) -> bool:
        return await self.emit(
            EventType.AGENT_STARTED,
            agent_name=agent_name,
            payload={
                "status": status,
                "message": f"{agent_name} started" if message is None else message,
            },
        )

    async def notify_agent_thinking(
        self, agent_name: str, thought: str, *, step: int | None = None, message: str | None = None
    ) -> bool:
        return await self.emit(
            EventType.AGENT_THINKING,
            agent_name=agent_name,
            payload={
                "thought": thought,
                "step": step,
                "message": f"{agent_name} is thinking" if message is None else message,
            },
        )

    async def notify_tool_executing(
        self,
        agent_name: str,
        tool_name: str,
        tool_input: Mapping[str, object] | None = None,
        *,
        message: str | None = None,
    ) -> bool:
        return await self.emit(
            EventType.TOOL_EXECUTING,
            agent_name=agent_name,
            payload={
                "tool_name": tool_name,
                "tool_input": to_json_value(dict(tool_input or {})),
                "message": f"Running {tool_name}" if message is None else message,
            },
        )

    async def notify_tool_completed(
        self,
        agent_name: str,
        tool_name: str,
        *,
        success: bool,
        result_summary: object = None,
        execution_time_ms: float | None = None,
        message: str | None = None,
    ) -> bool:
        outcome = "completed" if success else "failed"
        return await self.emit(
            EventType.TOOL_COMPLETED,
            agent_name=agent_name,
            payload={
                "tool_name": tool_name,
                "success": success,
                "result_summary": to_json_value(result_summary),
                "execution_time_ms": execution_time_ms,
                "message": f"{tool_name} {outcome}" if message is None else message,
            },
        )

    async def notify_agent_completed(
        self,
        agent_name: str,
        result: object = None,
        *,
        success: bool = True,
        message: str | None = None,
    ) -> bool:
        outcome = "completed" if success else "finished without success"
        return await self.emit(
            EventType.AGENT_COMPLETED,
            agent_name=agent_name,
            payload={
                "success": success,
                "result": to_json_value(result),
                "message": f"{agent_name} {outcome}" if message is None else message,
            },
        )

    async def notify_agent_error(
        self,
        agent_name: str,
        error_type: str,
        error_message: str,
        *,
        recoverable: bool = False,
        message: str | None = None,
    ) -> bool:
        return await self.emit(
            EventType.AGENT_ERROR,
            agent_name=agent_name,
            payload={
                "error_type": error_type,
                "error_message": error_message,
                "recoverable": recoverable,
                "message": f"{agent_name} failed ({error_type})" if message is None else message,
            },
        )

    async def notify_progress_update(
        self,
        agent_name: str,
        progress_percentage: float,
        current_step: str,
        *,
        message: str | None = None,
    ) -> bool:
        """Progress; a finite percentage outside 0..100 is clamped into it."""
        percentage: object = progress_percentage
        if (
            isinstance(progress_percentage, int | float)
            and not isinstance(progress_percentage, bool)
            and math.isfinite(progress_percentage)
        ):
            percentage = min(100.0, max(0.0, float(progress_percentage)))
        return await self.emit(
            EventType.PROGRESS_UPDATE,
            agent_name=agent_name,
            payload={
                "progress_percentage": percentage,
                "current_step": current_step,
                "message": current_step if message is None else message,
            },
        )

    # -- lifecycle and statistics ----------------------------------------------------------

    async def close(self) -> None:
        """Refuse further events and wait for the one in flight (idempotent)."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            pass
        self._log.debug("emitter.closed", events_emitted=self._emitted, last_seq=self._last_seq)

    def stats(self) -> EmitterStats:
        return EmitterStats(
            run_id=self._context.run_id,
            closed=self._closed,
            last_seq=self._last_seq,
            events_emitted=self._emitted,
            connections_reached=self._connections_reached,
            events_without_listener=self._without_listener,
            events_rejected=self._rejected,
            events_refused=self._refused,
            events_failed=self._failed,
            emitted_by_type=dict(self._by_type),
            errors_by_code=dict(self._errors),
        )


class RequestEmitterFactory:
    """Builds one :class:`RequestEmitter` per request over shared delivery and replay.

    The composition root configures it once (router, replay buffer, sanitiser policy) and
    hands it to the services that serve requests.
    """

    def __init__(
        self,
        *,
        delivery: EventDelivery,
        replay: ReplayBuffer,
        sanitizer: PayloadSanitizer | None = None,
    ) -> None:
        self._delivery = delivery
        self._replay = replay
        self._sanitizer = sanitizer or PayloadSanitizer()

    @property
    def replay(self) -> ReplayBuffer:
        """The replay buffer, for serving ``resume``."""
        return self._replay

    def create_emitter(self, context: UserExecutionContext) -> RequestEmitter:
        return RequestEmitter(
            context, delivery=self._delivery, replay=self._replay, sanitizer=self._sanitizer
        )
