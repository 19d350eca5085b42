"""Event sinks that keep events in memory: for runs with no WebSocket, streams and tests.

:class:`BufferingEventSink` is bound to one run's context. It validates each event against
the protocol's payload models (what it accepts, the WebSocket emitter accepts too), numbers
accepted events gaplessly from 1, stamps them with the UTC time and keeps them in order as
:class:`~dispatch.tools.api.RunEventEnvelope` values. Readers can look at what is there
(:attr:`BufferingEventSink.events`), wait for an event (:meth:`BufferingEventSink.wait_for`)
or follow the run live (:meth:`BufferingEventSink.stream`, which ends when the sink is
closed). A refused event (unknown type, bad payload, closed or full sink) returns ``False``
and uses no number, so the numbers of accepted events never have gaps.

:class:`BufferingSinkFactory` is an :data:`~dispatch.tools.api.EventSinkFactory` that gives
each run its own buffering sink and remembers them, so all events of all runs can be read
back afterwards (the composition root uses it when no WebSocket layer is configured).

:class:`FanOutEventSink` sends each event to several sinks; :func:`close_sink` closes the
sinks that hold resources.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial

import structlog
from pydantic import ValidationError

from context.api import UserExecutionContext
from dispatch.tools.api import (
    PAYLOAD_MODELS,
    ClosableEventSink,
    EventType,
    RunEventEnvelope,
    RunEventSink,
    is_valid_agent_name,
)

__all__ = [
    "DEFAULT_MAX_EVENTS",
    "DEFAULT_MAX_RUNS",
    "BufferingEventSink",
    "BufferingSinkFactory",
    "FanOutEventSink",
    "close_sink",
]

log = structlog.get_logger(__name__)

#: How many events one run's buffer keeps before it refuses more.
DEFAULT_MAX_EVENTS = 10_000
#: How many runs' sinks a :class:`BufferingSinkFactory` keeps.
DEFAULT_MAX_RUNS = 1_000


def _utc_now() -> datetime:
    return datetime.now(UTC)


class BufferingEventSink:
    """Records one run's events in order with a gapless ``seq``; see the module docstring.

    Implements :class:`~dispatch.tools.api.ClosableEventSink`.
    """

    def __init__(
        self,
        ctx: UserExecutionContext,
        *,
        max_events: int = DEFAULT_MAX_EVENTS,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not isinstance(ctx, UserExecutionContext):
            raise TypeError(f"a sink needs a UserExecutionContext, got {type(ctx).__name__}")
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self._context = ctx
        self._max_events = max_events
        self._clock = clock
        self._events: list[RunEventEnvelope] = []
        self._changed = asyncio.Condition()
        self._closed = False
        self._rejected = 0
        self._log = log.bind(user_id=ctx.user_id, run_id=ctx.run_id)

    def __repr__(self) -> str:
        return (
            f"BufferingEventSink(run_id={self._context.run_id!r}, events={len(self._events)}, "
            f"closed={self._closed})"
        )

    @property
    def context(self) -> UserExecutionContext:
        return self._context

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def events(self) -> tuple[RunEventEnvelope, ...]:
        """Every accepted event so far, in ``seq`` order."""
        return tuple(self._events)

    @property
    def last_seq(self) -> int:
        return len(self._events)

    @property
    def rejected(self) -> int:
        """How many events were refused (invalid, after close, or past the bound)."""
        return self._rejected

    def of_type(self, *types: EventType | str) -> list[RunEventEnvelope]:
        wanted = {EventType(kind) for kind in types}
        return [event for event in self._events if event.type in wanted]

    # -- RunEventSink ----------------------------------------------------------------------

    async def emit(
        self, event_type: str, *, agent_name: str, payload: Mapping[str, object]
    ) -> bool:
        """Validate, number and keep one event; ``False`` (and no number used) if refused."""
        envelope_parts = self._validated(event_type, agent_name, payload)
        if envelope_parts is None:
            self._rejected += 1
            return False
        kind, clean = envelope_parts
        async with self._changed:
            if self._closed or len(self._events) >= self._max_events:
                self._rejected += 1
                self._log.info("event_sink_refused", closed=self._closed)
                return False
            ctx = self._context
            self._events.append(
                RunEventEnvelope(
                    type=kind,
                    run_id=ctx.run_id,
                    thread_id=ctx.thread_id,
                    agent_name=agent_name,
                    seq=len(self._events) + 1,
                    timestamp=self._clock(),
                    request_id=ctx.request_id,
                    payload=clean,
                )
            )
            self._changed.notify_all()
        return True

    def _validated(
        self, event_type: object, agent_name: object, payload: object
    ) -> tuple[EventType, dict[str, object]] | None:
        if self._closed:
            return None
        try:
            kind = EventType(str(event_type))
        except ValueError:
            self._log.warning("event_rejected", reason="unknown event type")
            return None
        if not is_valid_agent_name(agent_name):
            self._log.warning("event_rejected", event_type=kind.value, reason="bad agent name")
            return None
        if not isinstance(payload, Mapping):
            self._log.warning("event_rejected", event_type=kind.value, reason="payload type")
            return None
        try:
            model = PAYLOAD_MODELS[kind].model_validate(dict(payload))
        except ValidationError as error:
            fields = sorted({".".join(str(p) for p in e["loc"]) for e in error.errors()})
            self._log.warning(
                "event_rejected", event_type=kind.value, reason="payload", fields=fields
            )
            return None
        return kind, model.model_dump(mode="json")

    # -- reading ---------------------------------------------------------------------------

    async def wait_for(
        self, predicate: Callable[[RunEventEnvelope], bool] | EventType | str
    ) -> RunEventEnvelope:
        """The first event (recorded already or still to come) that matches.

        ``predicate`` may be an event type. Raises :class:`LookupError` when the sink is
        closed without such an event. Bound the wait with ``asyncio.timeout`` if needed.
        """
        matches: Callable[[RunEventEnvelope], bool]
        if isinstance(predicate, EventType | str):
            kind = EventType(predicate)

            def matches(event: RunEventEnvelope) -> bool:
                return event.type is kind
        else:
            matches = predicate
        async for event in self.stream():
            if matches(event):
                return event
        raise LookupError(f"the sink of run {self._context.run_id} closed without that event")

    async def stream(self) -> AsyncIterator[RunEventEnvelope]:
        """Every event from the first, then each new one as it comes, until closed."""
        index = 0
        while True:
            async with self._changed:
                await self._changed.wait_for(partial(self._has_news, index))
                pending = self._events[index:]
                finished = self._closed
            for event in pending:
                yield event
            index += len(pending)
            if finished and index >= len(self._events):
                return

    def _has_news(self, seen: int) -> bool:
        return seen < len(self._events) or self._closed

    async def close(self) -> None:
        """Refuse further events and end every :meth:`stream` after what it has."""
        async with self._changed:
            self._closed = True
            self._changed.notify_all()


class BufferingSinkFactory:
    """Gives each run its own :class:`BufferingEventSink` and keeps them for reading back.

    Asking twice for the same user's run returns the same sink, so one run's events stay
    in one gapless sequence whoever emits them. At most ``max_runs`` sinks are kept: past
    that, the oldest closed sinks (finished runs) are forgotten first.
    """

    def __init__(
        self, *, max_events: int = DEFAULT_MAX_EVENTS, max_runs: int = DEFAULT_MAX_RUNS
    ) -> None:
        if max_runs < 1:
            raise ValueError("max_runs must be at least 1")
        self._max_events = max_events
        self._max_runs = max_runs
        self._sinks: dict[tuple[str, str], BufferingEventSink] = {}

    def __call__(self, ctx: UserExecutionContext, agent_name: str) -> BufferingEventSink:
        key = (ctx.user_id, ctx.run_id)
        sink = self._sinks.get(key)
        if sink is None:
            sink = BufferingEventSink(ctx, max_events=self._max_events)
            self._sinks[key] = sink
            self._evict()
        return sink

    def _evict(self) -> None:
        excess = len(self._sinks) - self._max_runs
        if excess <= 0:
            return
        finished = [key for key, sink in self._sinks.items() if sink.closed][:excess]
        for key in finished:
            del self._sinks[key]

    @property
    def sinks(self) -> tuple[BufferingEventSink, ...]:
        """Every sink handed out, in creation order."""
        return tuple(self._sinks.values())

    def for_run(self, user_id: str, run_id: str) -> BufferingEventSink:
        """The sink of ``user_id``'s run ``run_id``; KeyError if there is none."""
        return self._sinks[(user_id, run_id)]

    def forget(self, user_id: str, run_id: str) -> None:
        """Drop a run's sink (its events) once nobody needs them any more."""
        self._sinks.pop((user_id, run_id), None)


class FanOutEventSink:
    """Sends every event to several sinks (say, the WebSocket emitter and a gRPC stream).

    Each sink gets every event in the same order and numbers it itself. ``emit`` returns
    True when at least one sink accepted the event; one failing sink does not keep the
    event from the others. :meth:`close` closes every member that can be closed.
    """

    def __init__(self, sinks: Sequence[RunEventSink]) -> None:
        if not sinks:
            raise ValueError("a fan-out sink needs at least one sink")
        self._sinks = tuple(sinks)

    @property
    def sinks(self) -> tuple[RunEventSink, ...]:
        return self._sinks

    async def emit(
        self, event_type: str, *, agent_name: str, payload: Mapping[str, object]
    ) -> bool:
        accepted = False
        for sink in self._sinks:
            try:
                ok = await sink.emit(event_type, agent_name=agent_name, payload=payload)
            except Exception as exc:
                log.warning("event_sink_failed", event_type=event_type, exc_type=type(exc).__name__)
                continue
            accepted = accepted or ok is True
        return accepted

    async def close(self) -> None:
        await close_sink(*self._sinks)


async def close_sink(*sinks: object) -> None:
    """Close each sink that can be closed (a :class:`ClosableEventSink`); failures are
    logged, never raised: closing happens while a run is being cleaned up."""
    for sink in sinks:
        if not isinstance(sink, ClosableEventSink):
            continue
        try:
            await sink.close()
        except Exception as exc:
            log.warning("event_sink_close_failed", exc_type=type(exc).__name__)
