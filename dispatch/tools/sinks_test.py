"""BufferingEventSink and BufferingSinkFactory: validation, gapless numbering, waiting and
streaming, closing, bounds."""

from __future__ import annotations

import asyncio
from datetime import UTC
from typing import Any, cast

import pytest

from context.api import UserExecutionContext, new_user_id
from dispatch.tools.api import (
    AgentErrorPayload,
    ClosableEventSink,
    EventType,
    RunEventSink,
    ToolCompletedPayload,
)
from dispatch.tools.emit import emit_payload
from dispatch.tools.sinks import BufferingEventSink, BufferingSinkFactory


def ctx() -> UserExecutionContext:
    return UserExecutionContext.from_request(new_user_id())


async def emit_started(sink: BufferingEventSink, message: str = "go") -> bool:
    return await sink.emit(
        "agent_started", agent_name="assistant", payload={"status": "started", "message": message}
    )


async def test_events_are_numbered_gaplessly_with_the_run_identity() -> None:
    context = ctx()
    sink = BufferingEventSink(context)
    assert isinstance(sink, RunEventSink) and isinstance(sink, ClosableEventSink)
    assert await emit_started(sink)
    assert await sink.emit("agent_thinking", agent_name="assistant", payload={"thought": "hm"})
    assert await emit_payload(
        sink, AgentErrorPayload(error_type="timeout", error_message="slow"), agent_name="assistant"
    )
    assert [event.seq for event in sink.events] == [1, 2, 3]
    assert [event.type for event in sink.events] == [
        EventType.AGENT_STARTED,
        EventType.AGENT_THINKING,
        EventType.AGENT_ERROR,
    ]
    for event in sink.events:
        assert (event.run_id, event.thread_id, event.request_id) == (
            context.run_id,
            context.thread_id,
            context.request_id,
        )
        assert event.timestamp.tzinfo is not None
        assert event.timestamp.utcoffset() == UTC.utcoffset(None)
    # Defaults are filled in, so a payload always has every protocol field.
    assert sink.events[1].payload == {"thought": "hm", "step": None, "message": ""}
    wire = sink.events[0].to_wire()
    assert list(wire) == [
        "type",
        "run_id",
        "thread_id",
        "agent_name",
        "seq",
        "timestamp",
        "request_id",
        "payload",
    ]
    assert wire["timestamp"].endswith("Z")


@pytest.mark.parametrize(
    ("event_type", "agent_name", "payload"),
    [
        ("agent_exploded", "assistant", {}),
        ("agent_started", "", {"status": "started"}),
        ("agent_started", "bad\x00name", {"status": "started"}),
        ("agent_started", "assistant", {"status": "started", "user_id": "usr_other"}),
        ("agent_thinking", "assistant", {"thought": 42}),
        ("tool_completed", "assistant", {"tool_name": "x"}),
        ("progress_update", "assistant", {"progress_percentage": 101, "current_step": "s"}),
        ("agent_started", "assistant", ["not", "a", "mapping"]),
    ],
)
async def test_invalid_events_are_refused_without_using_a_number(
    event_type: str, agent_name: str, payload: object
) -> None:
    sink = BufferingEventSink(ctx())
    assert await emit_started(sink)
    accepted = await sink.emit(event_type, agent_name=agent_name, payload=cast(Any, payload))
    assert accepted is False
    assert sink.rejected == 1
    assert await emit_started(sink)
    assert [event.seq for event in sink.events] == [1, 2]


async def test_closed_sink_refuses_and_ends_streams() -> None:
    sink = BufferingEventSink(ctx())
    seen: list[int] = []

    async def follow() -> None:
        async for event in sink.stream():
            seen.append(event.seq)

    follower = asyncio.create_task(follow())
    assert await emit_started(sink, "one")
    assert await emit_started(sink, "two")
    await sink.close()
    assert not await emit_started(sink, "late")
    await asyncio.wait_for(follower, timeout=5)
    assert seen == [1, 2]
    # A stream opened after closing replays everything and ends.
    assert [event.seq async for event in sink.stream()] == [1, 2]


async def test_wait_for_finds_past_and_future_events() -> None:
    sink = BufferingEventSink(ctx())
    assert await emit_started(sink)
    first = await sink.wait_for(EventType.AGENT_STARTED)
    assert first.seq == 1
    waiter = asyncio.create_task(
        sink.wait_for(lambda event: event.type is EventType.TOOL_COMPLETED)
    )
    await asyncio.sleep(0)
    assert not waiter.done()
    completed = ToolCompletedPayload(tool_name="calculator", success=True, result_summary="3")
    assert await emit_payload(sink, completed, agent_name="assistant")
    found = await asyncio.wait_for(waiter, timeout=5)
    assert found.seq == 2 and found.payload["result_summary"] == "3"
    missing = asyncio.create_task(sink.wait_for(EventType.AGENT_ERROR))
    await sink.close()
    with pytest.raises(LookupError):
        await asyncio.wait_for(missing, timeout=5)


async def test_buffer_is_bounded() -> None:
    sink = BufferingEventSink(ctx(), max_events=2)
    assert await emit_started(sink)
    assert await emit_started(sink)
    assert not await emit_started(sink)
    assert sink.last_seq == 2 and sink.rejected == 1


async def test_factory_gives_each_run_its_own_sink() -> None:
    factory = BufferingSinkFactory()
    first, second = ctx(), ctx()
    sink_a = factory(first, "assistant")
    assert factory(first, "notes") is sink_a  # same run, same numbering
    sink_b = factory(second, "assistant")
    assert sink_b is not sink_a
    assert factory.for_run(second.user_id, second.run_id) is sink_b
    with pytest.raises(KeyError):
        factory.for_run(first.user_id, second.run_id)  # another user's run is not found
    assert factory.sinks == (sink_a, sink_b)


async def test_factory_forgets_finished_runs_first_when_full() -> None:
    factory = BufferingSinkFactory(max_runs=2)
    a, b, c = ctx(), ctx(), ctx()
    sink_a, sink_b = factory(a, "x"), factory(b, "x")
    await sink_b.close()
    sink_c = factory(c, "x")
    assert factory.sinks == (sink_a, sink_c)
