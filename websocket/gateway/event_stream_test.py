"""EventStream: live and replayed events merged per run without duplicates or gaps, and
nothing of a run before the message that introduces it. Real replay buffer and emitter."""

from __future__ import annotations

import json

import pytest

from context.api import UserExecutionContext
from websocket.emitter import MemoryReplayBuffer, RequestEmitter
from websocket.emitter.api import EventEnvelope
from websocket.emitter.testing import RecordingDelivery
from websocket.gateway.api import ReplayIncompleteError, RunNotFoundError
from websocket.gateway.event_stream import EventStream

ALICE = "usr_01m80000000000000000000001"
BOB = "usr_01m80000000000000000000002"


class Wire:
    """The frames a stream wrote, parsed."""

    def __init__(self) -> None:
        self.frames: list[dict[str, object]] = []

    async def send(self, text: str) -> None:
        self.frames.append(json.loads(text))

    def seqs(self, run_id: str) -> list[object]:
        return [frame["seq"] for frame in self.frames if frame.get("run_id") == run_id]


async def emit_run(
    replay: MemoryReplayBuffer, user_id: str, count: int
) -> tuple[str, list[EventEnvelope]]:
    """Emit ``count`` events of a new run of ``user_id`` through the real emitter."""
    delivery = RecordingDelivery()
    ctx = UserExecutionContext.from_request(user_id)
    emitter = RequestEmitter(ctx, delivery=delivery, replay=replay)
    for step in range(count):
        assert await emitter.notify_agent_thinking("research", f"step {step}", step=step)
    return ctx.run_id, delivery.envelopes()


@pytest.fixture
def replay() -> MemoryReplayBuffer:
    return MemoryReplayBuffer()


@pytest.fixture
def wire() -> Wire:
    return Wire()


@pytest.fixture
async def stream(replay: MemoryReplayBuffer, wire: Wire) -> EventStream:
    events = EventStream(user_id=ALICE, replay=replay, send=wire.send)
    await events.open(json.dumps({"type": "authentication_success"}))
    return events


async def test_live_events_pass_in_order(
    stream: EventStream, replay: MemoryReplayBuffer, wire: Wire
) -> None:
    run_id, events = await emit_run(replay, ALICE, 3)
    for envelope in events:
        await stream.live(envelope)
    assert wire.seqs(run_id) == [1, 2, 3]


async def test_duplicate_live_events_are_dropped(
    stream: EventStream, replay: MemoryReplayBuffer, wire: Wire
) -> None:
    run_id, events = await emit_run(replay, ALICE, 3)
    for envelope in [events[0], events[1], events[1], events[0], events[2], events[2]]:
        await stream.live(envelope)
    assert wire.seqs(run_id) == [1, 2, 3]


async def test_a_gap_in_live_events_is_filled_from_the_replay_buffer(
    stream: EventStream, replay: MemoryReplayBuffer, wire: Wire
) -> None:
    run_id, events = await emit_run(replay, ALICE, 5)
    await stream.live(events[0])
    await stream.live(events[4])  # 2..4 were lost on the way
    assert wire.seqs(run_id) == [1, 2, 3, 4, 5]


async def test_resume_replays_only_what_is_missing_then_live_continues(
    stream: EventStream, replay: MemoryReplayBuffer, wire: Wire
) -> None:
    run_id, events = await emit_run(replay, ALICE, 4)
    await stream.live(events[2])  # first contact in the middle of the run: seq 3
    assert await stream.resume(run_id, 1) == 2  # 2 and 4; 3 was already sent
    assert wire.seqs(run_id) == [3, 2, 4]
    for envelope in events:
        await stream.live(envelope)  # late live copies are all duplicates now
    assert wire.seqs(run_id) == [3, 2, 4]


async def test_resume_of_another_users_run_sends_nothing(
    stream: EventStream, replay: MemoryReplayBuffer, wire: Wire
) -> None:
    run_id, _ = await emit_run(replay, BOB, 3)
    before = list(wire.frames)
    with pytest.raises(RunNotFoundError):
        await stream.resume(run_id, 0)
    assert wire.frames == before


async def test_resume_reports_events_no_longer_retained_after_sending_the_rest(
    wire: Wire,
) -> None:
    replay = MemoryReplayBuffer(max_events_per_run=2)
    stream = EventStream(user_id=ALICE, replay=replay, send=wire.send)
    await stream.open("{}")
    run_id, _ = await emit_run(replay, ALICE, 5)
    with pytest.raises(ReplayIncompleteError):
        await stream.resume(run_id, 0)
    assert wire.seqs(run_id) == [4, 5]


async def test_events_before_open_wait_for_the_first_message(
    replay: MemoryReplayBuffer, wire: Wire
) -> None:
    stream = EventStream(user_id=ALICE, replay=replay, send=wire.send)
    run_id, events = await emit_run(replay, ALICE, 2)
    for envelope in events:
        await stream.live(envelope)
    assert wire.frames == []
    await stream.open(json.dumps({"type": "authentication_success"}))
    assert wire.frames[0] == {"type": "authentication_success"}
    assert wire.seqs(run_id) == [1, 2]


async def test_held_run_events_follow_the_accepting_message(
    stream: EventStream, replay: MemoryReplayBuffer, wire: Wire
) -> None:
    ctx = UserExecutionContext.from_request(ALICE)
    stream.hold(ctx.run_id)
    emitter = RequestEmitter(ctx, delivery=RecordingDelivery(), replay=replay)
    await emitter.notify_agent_started("research")
    envelope = (await replay.read_after(ALICE, ctx.run_id, 0))[0]
    await stream.live(envelope)
    assert wire.seqs(ctx.run_id) == []
    await stream.release(ctx.run_id, json.dumps({"type": "run_accepted"}))
    assert wire.frames[-2] == {"type": "run_accepted"}
    assert wire.seqs(ctx.run_id) == [1]


async def test_event_counter_counts_each_event_frame(
    replay: MemoryReplayBuffer, wire: Wire
) -> None:
    sent: list[None] = []
    stream = EventStream(
        user_id=ALICE, replay=replay, send=wire.send, on_event_sent=lambda: sent.append(None)
    )
    await stream.open("{}")
    run_id, events = await emit_run(replay, ALICE, 3)
    await stream.live(events[0])
    await stream.resume(run_id, 0)
    assert len(sent) == 3
