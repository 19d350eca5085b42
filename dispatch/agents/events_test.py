"""AgentEvents: one terminal event whoever races for it, nothing after it, and the stop
reason reported as recorded."""

from __future__ import annotations

import asyncio
import contextlib

from context.api import UserExecutionContext, new_user_id
from dispatch.agents.api import AgentResult, ErrorType
from dispatch.agents.events import AgentEvents
from dispatch.tools.api import EventType
from dispatch.tools.sinks import BufferingEventSink


def make() -> tuple[AgentEvents, BufferingEventSink]:
    sink = BufferingEventSink(UserExecutionContext.from_request(new_user_id()))
    return AgentEvents(sink, agent_name="assistant"), sink


async def test_only_the_first_terminal_event_goes_out() -> None:
    events, sink = make()
    assert await events.started()
    outcomes = await asyncio.gather(
        events.error(ErrorType.LLM_ERROR, "model down"),
        events.completed(AgentResult(answer="hi", steps=1, tool_calls=0)),
        events.error_for_stop(),
    )
    assert outcomes.count(True) == 1
    assert not await events.thinking("after the end")
    assert not await events.progress(50, "late")
    terminal = [
        e for e in sink.events if e.type in (EventType.AGENT_COMPLETED, EventType.AGENT_ERROR)
    ]
    assert len(terminal) == 1
    assert events.terminal is not None and events.terminal.type is terminal[0].type
    assert [event.seq for event in sink.events] == [1, 2]


async def test_the_recorded_stop_reason_is_reported() -> None:
    events, sink = make()
    assert events.request_stop(ErrorType.TIMEOUT, "too slow")
    assert not events.request_stop(ErrorType.CANCELLED, "later reason loses")
    assert await events.error_for_stop()
    payload = sink.events[-1].payload
    assert payload["error_type"] == "timeout"
    assert payload["error_message"] == "too slow"
    assert payload["recoverable"] is True


async def test_without_a_reason_a_stop_is_a_cancellation() -> None:
    events, sink = make()
    assert await events.error_for_stop()
    assert sink.events[-1].payload["error_type"] == "cancelled"


async def test_a_cancelled_emit_of_the_terminal_event_still_completes() -> None:
    events, sink = make()
    task = asyncio.create_task(events.completed(AgentResult(answer="x", steps=1, tool_calls=0)))
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert [event.type for event in sink.events] == [EventType.AGENT_COMPLETED]
    assert sink.events[0].payload["result"] == {"answer": "x", "steps": 1, "tool_calls": 0}
