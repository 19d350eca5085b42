"""The events of one agent run, with exactly one terminal event.

:class:`AgentEvents` wraps the run's :class:`~dispatch.tools.api.RunEventSink` (tool events
go to the same sink through the run's dispatcher) and enforces the protocol's shape:

* a run ends with exactly one terminal event, ``agent_completed`` or ``agent_error``; the
  first to claim the end wins and every later attempt is refused (returns ``False``), so
  an agent failing, a timeout and a user's cancellation racing each other still produce
  one ending. Nothing is emitted after the end;
* the terminal event is emitted to completion even if the run is cancelled meanwhile;
* what the terminal event said is kept (:attr:`AgentEvents.terminal`), so the run is
  recorded with exactly the outcome its client saw;
* whoever stops a run (the runner on timeout or cancellation) first says why
  (:meth:`AgentEvents.request_stop`); the agent, interrupted, reports that reason
  (:meth:`AgentEvents.error_for_stop`) instead of guessing.

Sink failures never raise into the agent: an undelivered event is counted and logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from pydantic import JsonValue

from dispatch.agents.api import AgentResult, ErrorType
from dispatch.tools.api import (
    AgentCompletedPayload,
    AgentErrorPayload,
    AgentStartedPayload,
    AgentThinkingPayload,
    EventPayload,
    EventType,
    ProgressUpdatePayload,
    RunEventSink,
)
from dispatch.tools.emit import emit_to_completion
from dispatch.tools.sanitize import shorten

__all__ = ["MAX_THOUGHT_CHARS", "AgentEvents", "TerminalEvent"]

log = structlog.get_logger(__name__)

#: Thoughts longer than this are cut before they are emitted.
MAX_THOUGHT_CHARS = 4000
_MAX_ERROR_CHARS = 1000


@dataclass(frozen=True, slots=True)
class TerminalEvent:
    """How a run ended, as its terminal event said."""

    type: EventType
    result: AgentResult | None = None
    error_type: str | None = None
    error_message: str | None = None
    recoverable: bool = False


class AgentEvents:
    """One run's event emitter with a single terminal event; see the module docstring."""

    def __init__(self, sink: RunEventSink, *, agent_name: str) -> None:
        self._sink = sink
        self._agent_name = agent_name
        self._terminal: TerminalEvent | None = None
        self._stop: tuple[ErrorType, str] | None = None
        self._emitted = 0
        self._undelivered = 0

    @property
    def sink(self) -> RunEventSink:
        return self._sink

    @property
    def agent_name(self) -> str:
        return self._agent_name

    @property
    def terminal(self) -> TerminalEvent | None:
        """The terminal event, once the run has ended."""
        return self._terminal

    @property
    def stop_reason(self) -> ErrorType | None:
        return None if self._stop is None else self._stop[0]

    @property
    def emitted(self) -> int:
        return self._emitted

    @property
    def undelivered(self) -> int:
        return self._undelivered

    def request_stop(self, reason: ErrorType, message: str) -> bool:
        """Record why the run is being stopped (first reason wins); True if recorded."""
        if self._stop is not None or self._terminal is not None:
            return False
        self._stop = (reason, message)
        return True

    async def _send(self, payload: EventPayload) -> bool:
        delivered = await emit_to_completion(self._sink, payload, agent_name=self._agent_name)
        if delivered:
            self._emitted += 1
        else:
            self._undelivered += 1
        return delivered

    async def _progress_event(self, payload: EventPayload) -> bool:
        if self._terminal is not None:
            return False
        return await self._send(payload)

    # -- progress events ---------------------------------------------------------------------

    async def started(self, message: str = "") -> bool:
        return await self._progress_event(AgentStartedPayload(status="started", message=message))

    async def thinking(self, thought: str, *, step: int | None = None, message: str = "") -> bool:
        return await self._progress_event(
            AgentThinkingPayload(
                thought=shorten(thought, MAX_THOUGHT_CHARS), step=step, message=message
            )
        )

    async def progress(self, percentage: float, current_step: str, *, message: str = "") -> bool:
        bounded = min(100.0, max(0.0, float(percentage)))
        return await self._progress_event(
            ProgressUpdatePayload(
                progress_percentage=bounded, current_step=current_step, message=message
            )
        )

    # -- terminal events ---------------------------------------------------------------------

    async def completed(self, result: AgentResult, *, message: str = "") -> bool:
        """Claim the end with ``agent_completed``; False if the run had already ended."""
        if self._terminal is not None:
            return False
        self._terminal = TerminalEvent(EventType.AGENT_COMPLETED, result=result)
        value: JsonValue = {
            "answer": result.answer,
            "steps": result.steps,
            "tool_calls": result.tool_calls,
        }
        await self._send(AgentCompletedPayload(success=True, result=value, message=message))
        return True

    async def error(
        self,
        error_type: ErrorType | str,
        error_message: str,
        *,
        recoverable: bool = False,
        message: str = "",
    ) -> bool:
        """Claim the end with ``agent_error``; False if the run had already ended."""
        if self._terminal is not None:
            return False
        kind = str(error_type)
        text = shorten(error_message, _MAX_ERROR_CHARS)
        self._terminal = TerminalEvent(
            EventType.AGENT_ERROR, error_type=kind, error_message=text, recoverable=recoverable
        )
        await self._send(
            AgentErrorPayload(
                error_type=kind,
                error_message=text,
                recoverable=recoverable,
                message=message or f"The run ended: {kind}",
            )
        )
        return True

    async def error_for_stop(self) -> bool:
        """End with ``agent_error`` for the recorded stop reason ("cancelled" if none)."""
        reason, text = self._stop or (ErrorType.CANCELLED, "the run was cancelled")
        return await self.error(reason, text, recoverable=reason is ErrorType.TIMEOUT)
