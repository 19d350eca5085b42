"""The per-request emitter, against the selected replay backend (see conftest.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from structlog.testing import capture_logs

from context import UserExecutionContext, context_scope, new_run_id, new_user_id
from websocket.emitter.api import (
    WIRE_FIELDS,
    EmitterFactory,
    EventDraft,
    EventEnvelope,
    EventType,
    ReplayBuffer,
    ReplayNotFoundError,
    UserWebSocketEmitter,
)
from websocket.emitter.emitter import RequestEmitter, RequestEmitterFactory, to_json_value
from websocket.emitter.sanitize import REDACTED
from websocket.emitter.testing import FailingDelivery, RecordingDelivery, ReplayStore

SECRET = "hunter2-do-not-leak"


def make_emitter(
    ctx: UserExecutionContext, replay: ReplayBuffer, delivery: RecordingDelivery | None = None
) -> tuple[RequestEmitter, RecordingDelivery]:
    sink = delivery or RecordingDelivery()
    return RequestEmitter(ctx, delivery=sink, replay=replay), sink


async def assert_nothing_buffered(replay: ReplayBuffer, ctx: UserExecutionContext) -> None:
    assert await replay.last_seq(ctx.user_id, ctx.run_id) == 0
    with pytest.raises(ReplayNotFoundError):
        await replay.read_after(ctx.user_id, ctx.run_id, 0)


GOOD_PAYLOADS: dict[str, dict[str, object]] = {
    "agent_started": {"status": "started", "message": "hello"},
    "agent_thinking": {"thought": "let me see", "step": 1, "message": "thinking"},
    "tool_executing": {"tool_name": "calculator", "tool_input": {"expression": "2*3"}},
    "tool_completed": {
        "tool_name": "calculator",
        "success": True,
        "result_summary": "6",
        "execution_time_ms": 3,
        "message": "ok",
    },
    "agent_completed": {"success": True, "result": {"answer": 6}, "message": "done"},
    "agent_error": {"error_type": "cancelled", "error_message": "stopped", "recoverable": False},
    "progress_update": {"progress_percentage": 42, "current_step": "searching"},
}


# -- the envelope --------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", list(GOOD_PAYLOADS))
async def test_valid_event_is_numbered_buffered_and_delivered_to_the_contexts_user(
    alice: UserExecutionContext, replay: ReplayBuffer, event_type: str
) -> None:
    emitter, sink = make_emitter(alice, replay)
    assert await emitter.emit(event_type, agent_name="assistant", payload=GOOD_PAYLOADS[event_type])
    [routed] = sink.delivered
    assert routed.user_id == alice.user_id
    wire = routed.envelope.to_wire()
    assert list(wire) == list(WIRE_FIELDS)
    assert wire["type"] == event_type
    assert (wire["run_id"], wire["thread_id"], wire["request_id"]) == (
        alice.run_id,
        alice.thread_id,
        alice.request_id,
    )
    assert wire["agent_name"] == "assistant"
    assert wire["seq"] == 1
    assert wire["timestamp"].endswith("Z")
    datetime.fromisoformat(wire["timestamp"])
    assert alice.user_id not in json.dumps(wire)
    assert await replay.read_after(alice.user_id, alice.run_id, 0) == [routed.envelope]


async def test_timestamp_comes_from_the_clock_in_utc(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    moment = datetime(2030, 5, 6, 7, 8, 9, 10, tzinfo=UTC)
    sink = RecordingDelivery()
    emitter = RequestEmitter(alice, delivery=sink, replay=replay, clock=lambda: moment)
    assert await emitter.notify_agent_started("assistant")
    assert sink.envelopes()[0].to_wire()["timestamp"] == "2030-05-06T07:08:09.000010Z"


# -- validation ----------------------------------------------------------------------------

BAD_EVENTS: list[tuple[object, str, object]] = [
    ("agent_started", "assistant", {"status": "started", "message": "x", "user_id": "usr_evil"}),
    ("agent_thinking", "assistant", {"step": 1}),
    ("agent_thinking", "assistant", {"thought": "x", "step": "one"}),
    ("tool_executing", "assistant", {"tool_input": {"a": 1}}),
    ("tool_executing", "assistant", {"tool_name": "t", "tool_input": "not an object"}),
    ("tool_executing", "assistant", {"tool_name": "t", "tool_input": {"when": datetime.now(UTC)}}),
    ("tool_completed", "assistant", {"tool_name": "t", "success": "yes"}),
    ("tool_completed", "assistant", {"tool_name": "t", "success": True, "execution_time_ms": -5}),
    ("agent_completed", "assistant", {"success": 1}),
    ("agent_error", "assistant", {"error_type": "x"}),
    ("progress_update", "assistant", {"progress_percentage": 150, "current_step": "x"}),
    ("progress_update", "assistant", {"progress_percentage": float("nan"), "current_step": "x"}),
    ("agent_exploded", "assistant", {}),
    ("AGENT_STARTED", "assistant", {}),
    ("agent_started ", "assistant", {}),
    ("", "assistant", {}),
    (None, "assistant", {}),
    ("agent_started", "", {}),
    ("agent_started", "   ", {}),
    ("agent_started", "x" * 129, {}),
    ("agent_started", "evil\r\nname", {}),
    ("agent_started", "assistant", ["not", "a", "mapping"]),
    ("agent_started", "assistant", None),
]


@pytest.mark.parametrize(("event_type", "agent_name", "payload"), BAD_EVENTS, ids=repr)
async def test_invalid_event_returns_false_and_is_neither_delivered_nor_buffered(
    alice: UserExecutionContext,
    replay: ReplayBuffer,
    event_type: Any,
    agent_name: str,
    payload: Any,
) -> None:
    emitter, sink = make_emitter(alice, replay)
    with capture_logs() as logs:
        assert await emitter.emit(event_type, agent_name=agent_name, payload=payload) is False
    assert sink.delivered == []
    await assert_nothing_buffered(replay, alice)
    stats = emitter.stats()
    assert (stats.events_rejected, stats.events_emitted, stats.last_seq) == (1, 0, 0)
    assert stats.errors_by_code == {"INVALID_EVENT": 1}
    [entry] = [entry for entry in logs if entry["event"] == "emitter.event_rejected"]
    assert entry["error_code"] == "INVALID_EVENT"
    assert entry["log_level"] == "warning"


async def test_a_rejected_event_uses_no_sequence_number(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    emitter, sink = make_emitter(alice, replay)
    assert not await emitter.emit("agent_thinking", agent_name="a", payload={"step": 1})
    assert await emitter.notify_agent_thinking("a", "ok")
    assert sink.seqs() == [1]


async def test_rejection_log_names_the_field_but_never_the_value(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    emitter, _ = make_emitter(alice, replay)
    with capture_logs() as logs:
        ok = await emitter.emit(
            "tool_completed",
            agent_name="a",
            payload={"tool_name": "t", "success": SECRET, "password": SECRET},
        )
    assert not ok
    text = json.dumps(logs, default=str)
    assert SECRET not in text
    assert "success" in text


# -- sanitising ----------------------------------------------------------------------------


async def test_tool_input_and_results_are_sanitised_before_buffering_and_delivery(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    emitter, sink = make_emitter(alice, replay)
    assert await emitter.notify_tool_executing(
        "assistant",
        "http.post",
        {
            "url": "https://example.org",
            "Password": SECRET,
            "headers": {"Authorization": f"Bearer {SECRET}", "X-Api-Key": SECRET},
            "body": [{"refresh_token": SECRET, "text": "y" * 5000}],
        },
    )
    assert await emitter.notify_tool_completed(
        "assistant",
        "http.post",
        success=True,
        result_summary={f"row{i}": "z" * 200 for i in range(400)} | {"cookie": SECRET},
    )
    assert await emitter.notify_agent_completed("assistant", {"answer": 1, "secret": SECRET})
    buffered = await replay.read_after(alice.user_id, alice.run_id, 0)
    assert buffered == sink.envelopes()
    wire_text = "".join(envelope.to_json() for envelope in buffered)
    assert SECRET not in wire_text
    executing, completed, finished = (envelope.payload for envelope in buffered)
    tool_input = executing["tool_input"]
    assert isinstance(tool_input, dict)
    assert tool_input["Password"] == REDACTED
    assert tool_input["headers"] == {"Authorization": REDACTED, "X-Api-Key": REDACTED}
    body = tool_input["body"]
    assert isinstance(body, list)
    [part] = body
    assert isinstance(part, dict)
    assert part["refresh_token"] == REDACTED
    assert str(part["text"]).endswith("...[truncated 3000 chars]")
    summary = completed["result_summary"]
    assert isinstance(summary, dict)
    assert (summary["summarized"], summary["type"], summary["key_count"]) == (True, "object", 401)
    assert finished["result"] == {"answer": 1, "secret": REDACTED}


async def test_long_thought_is_cut_not_lost(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    emitter, sink = make_emitter(alice, replay)
    assert await emitter.notify_agent_thinking("assistant", "t" * 10_000)
    thought = sink.envelopes()[0].payload["thought"]
    assert isinstance(thought, str)
    assert thought.startswith("t" * 2000)
    assert "truncated 8000 chars" in thought


# -- numbering -----------------------------------------------------------------------------


async def test_100_concurrent_emits_on_one_run_are_numbered_1_to_100(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    emitter, sink = make_emitter(alice, replay)
    results = await asyncio.gather(
        *(emitter.notify_agent_thinking("assistant", f"thought {i}", step=i) for i in range(100))
    )
    assert all(results)
    assert sorted(sink.seqs()) == list(range(1, 101))
    # One emitter delivers in seq order.
    assert list(sink.seqs()) == list(range(1, 101))
    buffered = await replay.read_after(alice.user_id, alice.run_id, 0)
    assert [envelope.seq for envelope in buffered] == list(range(1, 101))
    assert emitter.stats().last_seq == 100


async def test_two_emitters_of_one_run_concurrently_share_one_gapless_sequence(
    alice: UserExecutionContext, replay_store: ReplayStore
) -> None:
    first, sink_a = make_emitter(alice, replay_store.open())
    second, sink_b = make_emitter(alice.create_child_context("resume"), replay_store.open())
    await asyncio.gather(
        *(first.notify_agent_thinking("a", f"x{i}") for i in range(50)),
        *(second.notify_agent_thinking("a", f"y{i}") for i in range(50)),
    )
    seqs = [*sink_a.seqs(), *sink_b.seqs()]
    assert sorted(seqs) == list(range(1, 101))


async def test_a_second_emitter_for_the_same_run_continues_the_sequence(
    alice: UserExecutionContext, replay_store: ReplayStore
) -> None:
    first, sink_a = make_emitter(alice, replay_store.open())
    for step in range(3):
        assert await first.notify_agent_thinking("assistant", "first part", step=step)
    await first.close()
    resumed_ctx = UserExecutionContext(
        user_id=alice.user_id, thread_id=alice.thread_id, run_id=alice.run_id
    )
    second, sink_b = make_emitter(resumed_ctx, replay_store.open())
    assert await second.notify_agent_thinking("assistant", "second part")
    assert await second.notify_agent_completed("assistant", "done")
    assert sink_a.seqs() == [1, 2, 3]
    assert sink_b.seqs() == [4, 5]
    replayed = await replay_store.open().read_after(alice.user_id, alice.run_id, 0)
    assert [envelope.seq for envelope in replayed] == [1, 2, 3, 4, 5]
    assert {envelope.request_id for envelope in replayed} == {
        alice.request_id,
        resumed_ctx.request_id,
    }


async def test_runs_are_numbered_independently(
    alice: UserExecutionContext, bob: UserExecutionContext, replay: ReplayBuffer
) -> None:
    other_run = UserExecutionContext.from_request(alice.user_id, thread_id=alice.thread_id)
    emitters = [make_emitter(ctx, replay) for ctx in (alice, other_run, bob)]
    for emitter, _ in emitters:
        for _ in range(3):
            assert await emitter.notify_progress_update("a", 10, "step")
    assert [sink.seqs() for _, sink in emitters] == [[1, 2, 3]] * 3


# -- ordering of buffer and delivery -------------------------------------------------------


@dataclass
class BufferCheckingDelivery:
    """A delivery that looks the event up in the replay buffer when it is handed over."""

    replay: ReplayBuffer
    seen_in_buffer: list[bool]

    async def deliver(self, user_id: str, envelope: EventEnvelope) -> int:
        buffered = await self.replay.read_after(user_id, envelope.run_id, envelope.seq - 1)
        self.seen_in_buffer.append(buffered[:1] == [envelope])
        return 1


async def test_events_are_buffered_before_they_are_delivered(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    seen: list[bool] = []
    emitter = RequestEmitter(alice, delivery=BufferCheckingDelivery(replay, seen), replay=replay)
    for i in range(5):
        assert await emitter.notify_agent_thinking("a", f"t{i}")
    assert seen == [True] * 5


async def test_a_failed_delivery_returns_false_but_the_event_stays_replayable(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    failing = FailingDelivery()
    emitter = RequestEmitter(alice, delivery=failing, replay=replay)
    with capture_logs() as logs:
        assert await emitter.notify_agent_started("assistant") is False
    assert failing.calls == 1
    [buffered] = await replay.read_after(alice.user_id, alice.run_id, 0)
    assert buffered.type is EventType.AGENT_STARTED
    stats = emitter.stats()
    assert (stats.events_failed, stats.errors_by_code) == (1, {"DELIVERY_FAILED": 1})
    assert any(entry["event"] == "emitter.event_failed" for entry in logs)


class BrokenReplay:
    """A replay buffer whose store is down."""

    async def append(self, user_id: str, run_id: str, draft: EventDraft) -> EventEnvelope:
        raise OSError("store unreachable")

    async def read_after(
        self, user_id: str, run_id: str, after_seq: int, *, limit: int | None = None
    ) -> list[EventEnvelope]:
        raise OSError("store unreachable")

    async def last_seq(self, user_id: str, run_id: str) -> int:
        raise OSError("store unreachable")

    async def close(self) -> None:
        return None


async def test_a_failing_replay_store_means_no_delivery_and_false(
    alice: UserExecutionContext,
) -> None:
    emitter, sink = make_emitter(alice, BrokenReplay())
    assert await emitter.notify_agent_started("assistant") is False
    assert sink.delivered == []
    assert emitter.stats().errors_by_code == {"REPLAY_UNAVAILABLE": 1}


async def test_zero_listening_connections_still_counts_as_emitted(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    emitter, _ = make_emitter(alice, replay, RecordingDelivery(reach=0))
    assert await emitter.notify_agent_started("assistant")
    stats = emitter.stats()
    assert (stats.events_emitted, stats.events_without_listener, stats.connections_reached) == (
        1,
        1,
        0,
    )


# -- ownership -----------------------------------------------------------------------------


async def test_an_emitter_used_inside_another_users_scope_delivers_nothing(
    alice: UserExecutionContext, bob: UserExecutionContext, replay: ReplayBuffer
) -> None:
    emitter, sink = make_emitter(alice, replay)
    with capture_logs() as logs:
        async with context_scope(bob):
            assert await emitter.notify_agent_started("assistant") is False
            assert (
                await emitter.emit("agent_thinking", agent_name="a", payload={"thought": "x"})
                is False
            )
    assert sink.delivered == []
    await assert_nothing_buffered(replay, alice)
    await assert_nothing_buffered(replay, bob)
    stats = emitter.stats()
    assert (stats.events_refused, stats.errors_by_code) == (2, {"EVENT_OWNERSHIP_VIOLATION": 2})
    refusals = [entry for entry in logs if entry["event"] == "emitter.event_refused"]
    assert len(refusals) == 2
    assert all(entry["security_event"] is True for entry in refusals)


async def test_an_emitter_inside_its_own_users_child_scope_works(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    emitter, sink = make_emitter(alice, replay)
    async with context_scope(alice.create_child_context("tool_call")):
        assert await emitter.notify_agent_started("assistant")
    assert sink.users() == {alice.user_id}


@dataclass
class MisroutingReplay:
    """A faulty store that numbers the event but hands back another run's envelope."""

    inner: ReplayBuffer
    other_run_id: str

    async def append(self, user_id: str, run_id: str, draft: EventDraft) -> EventEnvelope:
        envelope = await self.inner.append(user_id, run_id, draft)
        return EventEnvelope.model_validate({**dict(envelope), "run_id": self.other_run_id})

    async def read_after(
        self, user_id: str, run_id: str, after_seq: int, *, limit: int | None = None
    ) -> list[EventEnvelope]:
        return await self.inner.read_after(user_id, run_id, after_seq, limit=limit)

    async def last_seq(self, user_id: str, run_id: str) -> int:
        return await self.inner.last_seq(user_id, run_id)

    async def close(self) -> None:
        await self.inner.close()


async def test_an_envelope_of_another_run_from_the_store_is_never_delivered(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    emitter, sink = make_emitter(alice, MisroutingReplay(replay, new_run_id()))
    assert await emitter.notify_agent_started("assistant") is False
    assert sink.delivered == []
    assert emitter.stats().errors_by_code == {"EVENT_OWNERSHIP_VIOLATION": 1}


async def test_concurrent_users_each_receive_only_their_own_events(replay: ReplayBuffer) -> None:
    contexts = [UserExecutionContext.from_request(new_user_id()) for _ in range(20)]
    sink = RecordingDelivery()
    emitters = [RequestEmitter(ctx, delivery=sink, replay=replay) for ctx in contexts]

    async def run(emitter: RequestEmitter) -> None:
        async with context_scope(emitter.context):
            await emitter.notify_agent_started("assistant")
            for step in range(5):
                await emitter.notify_agent_thinking("assistant", "t", step=step)
            await emitter.notify_agent_completed("assistant", "ok")

    await asyncio.gather(*(run(emitter) for emitter in emitters))
    for ctx in contexts:
        mine = [routed for routed in sink.delivered if routed.envelope.run_id == ctx.run_id]
        assert {routed.user_id for routed in mine} == {ctx.user_id}
        assert [routed.envelope.seq for routed in mine] == list(range(1, 8))
        replayed = await replay.read_after(ctx.user_id, ctx.run_id, 0)
        assert [envelope.seq for envelope in replayed] == list(range(1, 8))


# -- lifecycle -----------------------------------------------------------------------------


async def test_a_closed_emitter_refuses_to_emit(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    emitter, sink = make_emitter(alice, replay)
    assert await emitter.notify_agent_started("assistant")
    await emitter.close()
    await emitter.close()  # idempotent
    assert emitter.closed
    assert await emitter.notify_agent_completed("assistant", "late") is False
    assert await emitter.emit("agent_thinking", agent_name="a", payload={"thought": "x"}) is False
    assert sink.seqs() == [1]
    assert await replay.last_seq(alice.user_id, alice.run_id) == 1
    stats = emitter.stats()
    assert (stats.closed, stats.events_refused, stats.errors_by_code) == (
        True,
        2,
        {"EMITTER_CLOSED": 2},
    )


@dataclass
class GatedDelivery:
    """A delivery that holds each event until released."""

    entered: asyncio.Event
    release: asyncio.Event
    delivered: int = 0

    async def deliver(self, user_id: str, envelope: EventEnvelope) -> int:
        self.entered.set()
        await self.release.wait()
        self.delivered += 1
        return 1


async def test_close_waits_for_the_event_in_flight_and_refuses_queued_ones(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    gate = GatedDelivery(asyncio.Event(), asyncio.Event())
    emitter = RequestEmitter(alice, delivery=gate, replay=replay)
    in_flight = asyncio.create_task(emitter.notify_agent_started("assistant"))
    await gate.entered.wait()
    queued = asyncio.create_task(emitter.notify_agent_thinking("assistant", "queued"))
    closing = asyncio.create_task(emitter.close())
    await asyncio.sleep(0)
    assert not closing.done()
    gate.release.set()
    await closing
    assert await in_flight is True
    assert await queued is False
    assert gate.delivered == 1
    assert await replay.last_seq(alice.user_id, alice.run_id) == 1


async def test_emitter_requires_a_real_context(replay: ReplayBuffer) -> None:
    with pytest.raises(TypeError):
        not_a_context = cast(Any, {"user_id": "usr_x"})
        RequestEmitter(not_a_context, delivery=RecordingDelivery(), replay=replay)


# -- typed helpers -------------------------------------------------------------------------


async def test_typed_helpers_build_the_design_payloads(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    emitter, sink = make_emitter(alice, replay)
    assert await emitter.notify_agent_started("assistant")
    assert await emitter.notify_agent_thinking("assistant", "hmm", step=2)
    assert await emitter.notify_tool_executing("assistant", "calculator", {"expression": "1+2"})
    assert await emitter.notify_tool_completed(
        "assistant", "calculator", success=True, result_summary=3, execution_time_ms=1.25
    )
    assert await emitter.notify_progress_update("assistant", 250, "finishing")
    assert await emitter.notify_progress_update("assistant", -3, "rewinding")
    assert await emitter.notify_agent_error("assistant", "timeout", "too slow", recoverable=True)
    assert await emitter.notify_agent_completed("assistant", {"answer": 3})
    payloads = [(envelope.type.value, envelope.payload) for envelope in sink.envelopes()]
    assert payloads == [
        ("agent_started", {"status": "started", "message": "assistant started"}),
        ("agent_thinking", {"thought": "hmm", "step": 2, "message": "assistant is thinking"}),
        (
            "tool_executing",
            {
                "tool_name": "calculator",
                "tool_input": {"expression": "1+2"},
                "message": "Running calculator",
            },
        ),
        (
            "tool_completed",
            {
                "tool_name": "calculator",
                "success": True,
                "result_summary": 3,
                "execution_time_ms": 1.25,
                "message": "calculator completed",
            },
        ),
        (
            "progress_update",
            {"progress_percentage": 100.0, "current_step": "finishing", "message": "finishing"},
        ),
        (
            "progress_update",
            {"progress_percentage": 0.0, "current_step": "rewinding", "message": "rewinding"},
        ),
        (
            "agent_error",
            {
                "error_type": "timeout",
                "error_message": "too slow",
                "recoverable": True,
                "message": "assistant failed (timeout)",
            },
        ),
        (
            "agent_completed",
            {"success": True, "result": {"answer": 3}, "message": "assistant completed"},
        ),
    ]
    stats = emitter.stats()
    assert stats.events_emitted == 8
    assert stats.emitted_by_type["progress_update"] == 2
    assert stats.connections_reached == 8


class Opaque:
    def __str__(self) -> str:
        return SECRET


def test_to_json_value_converts_rich_objects_and_hides_unknown_ones() -> None:
    @dataclass
    class Row:
        when: datetime
        tags: frozenset[str]

    value = to_json_value(
        {"row": Row(datetime(2025, 1, 1, tzinfo=UTC), frozenset({"a"})), "o": Opaque()}
    )
    assert value == {"row": {"when": "2025-01-01T00:00:00Z", "tags": ["a"]}, "o": "<Opaque>"}
    assert SECRET not in json.dumps(value)


async def test_typed_helpers_accept_rich_results(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    emitter, sink = make_emitter(alice, replay)
    assert await emitter.notify_agent_completed(
        "assistant", {"when": datetime(2025, 1, 1, tzinfo=UTC)}
    )
    assert sink.envelopes()[0].payload["result"] == {"when": "2025-01-01T00:00:00Z"}


async def test_progress_helper_still_rejects_nan(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    emitter, sink = make_emitter(alice, replay)
    assert await emitter.notify_progress_update("assistant", float("nan"), "x") is False
    assert sink.delivered == []


# -- factory -------------------------------------------------------------------------------


async def test_the_implementations_satisfy_the_api_protocols(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    factory: EmitterFactory = RequestEmitterFactory(delivery=RecordingDelivery(), replay=replay)
    emitter: UserWebSocketEmitter = factory.create_emitter(alice)
    assert emitter.context is alice
    assert not emitter.closed
    assert await emitter.emit("agent_started", agent_name="a", payload={})
    assert emitter.stats().events_emitted == 1


async def test_factory_builds_a_fresh_emitter_per_request(
    alice: UserExecutionContext, bob: UserExecutionContext, replay: ReplayBuffer
) -> None:
    sink = RecordingDelivery()
    factory = RequestEmitterFactory(delivery=sink, replay=replay)
    first, second = factory.create_emitter(alice), factory.create_emitter(alice)
    assert first is not second
    assert factory.replay is replay
    await first.close()
    assert await second.notify_agent_started("assistant")
    assert await factory.create_emitter(bob).notify_agent_started("assistant")
    assert sorted(routed.user_id for routed in sink.delivered) == sorted(
        [alice.user_id, bob.user_id]
    )


async def test_emitter_logs_carry_the_request_identity(alice: UserExecutionContext) -> None:
    emitter, _ = make_emitter(alice, BrokenReplay())
    with capture_logs() as logs:
        await emitter.notify_agent_started("assistant")
    [entry] = [entry for entry in logs if entry["event"] == "emitter.event_failed"]
    expected: Mapping[str, object] = {
        "user_id": alice.user_id,
        "run_id": alice.run_id,
        "request_id": alice.request_id,
        "error_code": "REPLAY_UNAVAILABLE",
    }
    assert {key: entry[key] for key in expected} == expected
