"""Runs over real connections: start_agent and the event stream, isolation between users,
reconnect + resume, cancel - including another user's run."""

from __future__ import annotations

from typing import Any

from websocket.auth.testing import TestUser
from websocket.emitter.api import WIRE_FIELDS
from websocket.gateway.conftest import AGENT, SEQUENCE, Harness


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [event["seq"] for event in events]


# ----- start_agent ----------------------------------------------------------------------------


async def test_start_agent_is_accepted_then_streams_the_full_sequence_gaplessly(
    harness: Harness, alice: TestUser
) -> None:
    client = await harness.connect(alice)
    accepted = await harness.start_run(client, client_msg_id="m-1")
    assert set(accepted) == {"type", "run_id", "thread_id", "client_msg_id"}
    assert accepted["client_msg_id"] == "m-1"
    assert accepted["run_id"].startswith("run_")
    assert accepted["thread_id"].startswith("thr_")
    events = await client.run_events(accepted["run_id"])
    assert [event["type"] for event in events] == list(SEQUENCE)
    assert seqs(events) == [1, 2, 3, 4, 5]
    for event in events:
        assert list(event) == list(WIRE_FIELDS)
        assert event["thread_id"] == accepted["thread_id"]
        assert event["agent_name"] == AGENT
        assert event["timestamp"].endswith("Z")
    assert events[2]["payload"]["tool_name"] == "calculator"
    assert events[3]["payload"]["success"] is True
    assert events[4]["payload"]["success"] is True
    await client.ping_pong()  # nothing more arrives
    metrics = harness.gateway.metrics
    assert metrics.value("ssot_ws_events_sent_total") == 5
    assert metrics.value("ssot_ws_messages_total", {"type": "start_agent"}) == 1


async def test_run_context_comes_from_the_verified_user_and_connection(
    harness: Harness, alice: TestUser
) -> None:
    client = await harness.raw(token=alice.access_token)
    welcome = await client.recv()
    accepted = await harness.start_run(client)
    (ctx,) = harness.runs.started
    assert ctx.user_id == alice.user_id
    assert ctx.run_id == accepted["run_id"]
    assert ctx.websocket_client_id == welcome["connection_id"]


async def test_start_agent_continues_a_given_thread(harness: Harness, alice: TestUser) -> None:
    client = await harness.connect(alice)
    first = await harness.start_run(client)
    await client.run_events(first["run_id"])
    second = await harness.start_run(client, thread_id=first["thread_id"])
    assert second["thread_id"] == first["thread_id"]
    assert second["run_id"] != first["run_id"]
    events = await client.run_events(second["run_id"])
    assert seqs(events) == [1, 2, 3, 4, 5]  # numbering is per run


async def test_unknown_agent_is_rejected_and_the_connection_stays(
    harness: Harness, alice: TestUser
) -> None:
    client = await harness.connect(alice)
    await client.send({"type": "start_agent", "agent": "nonexistent", "message": "hi"})
    reply = await client.recv()
    assert reply == {"type": "error", "error_code": "RUN_REJECTED", "message": "Unknown agent."}
    await client.ping_pong()


async def test_client_supplied_user_id_is_refused(harness: Harness, alice: TestUser) -> None:
    client = await harness.connect(alice)
    await client.send(
        {"type": "start_agent", "agent": AGENT, "message": "hi", "user_id": "usr_someone"}
    )
    assert (await client.recv())["error_code"] == "INVALID_MESSAGE"
    assert harness.runs.started == []


# ----- isolation and fan-out ------------------------------------------------------------------


async def test_other_users_receive_nothing_of_a_run(
    harness: Harness, alice: TestUser, bob: TestUser
) -> None:
    alices = await harness.connect(alice)
    bobs = await harness.connect(bob)
    accepted = await harness.start_run(alices)
    await alices.run_events(accepted["run_id"])
    await bobs.ping_pong()  # the first thing bob receives is his own pong


async def test_every_connection_of_the_user_receives_the_run(
    harness: Harness, alice: TestUser
) -> None:
    starter = await harness.connect(alice)
    other_tab = await harness.connect(alice)
    accepted = await harness.start_run(starter)
    mine = await starter.run_events(accepted["run_id"])
    theirs = await other_tab.run_events(accepted["run_id"])
    assert mine == theirs
    assert seqs(theirs) == [1, 2, 3, 4, 5]


# ----- reconnect and resume -------------------------------------------------------------------


async def test_reconnect_mid_run_and_resume_yields_the_complete_sequence(
    harness: Harness, alice: TestUser
) -> None:
    harness.runs.pause_after = {2, 3}
    first = await harness.connect(alice)
    accepted = await harness.start_run(first)
    run_id = accepted["run_id"]
    before = [await first.recv(), await first.recv()]
    assert seqs(before) == [1, 2]
    assert await harness.runs.next_pause() == (run_id, 2)
    await first.ws.close()  # the connection drops in the middle of the run

    harness.runs.proceed()  # event 3 is emitted while nobody is connected
    assert await harness.runs.next_pause() == (run_id, 3)

    second = await harness.connect(alice)
    await second.send({"type": "resume", "run_id": run_id, "after_seq": before[-1]["seq"]})
    replayed = await second.recv()
    assert replayed["seq"] == 3
    harness.runs.proceed()  # the rest arrives live
    after = [replayed, *await second.run_events(run_id)]
    combined = before + after
    assert seqs(combined) == [1, 2, 3, 4, 5]
    assert [event["type"] for event in combined] == list(SEQUENCE)
    await second.ping_pong()


async def test_live_events_before_resume_are_not_sent_twice(
    harness: Harness, alice: TestUser
) -> None:
    harness.runs.pause_after = {2}
    first = await harness.connect(alice)
    accepted = await harness.start_run(first)
    run_id = accepted["run_id"]
    before = [await first.recv(), await first.recv()]
    await harness.runs.next_pause()
    await first.ws.close()

    second = await harness.connect(alice)
    harness.runs.proceed()  # 3..5 reach the new connection live, before it resumes
    live = await second.run_events(run_id)
    assert seqs(live) == [3, 4, 5]
    await second.send({"type": "resume", "run_id": run_id, "after_seq": 2})
    await second.ping_pong()  # nothing replayed: the connection already sent 3..5
    assert seqs(before + live) == [1, 2, 3, 4, 5]


async def test_resume_of_a_finished_run_replays_it_in_order(
    harness: Harness, alice: TestUser
) -> None:
    first = await harness.connect(alice)
    accepted = await harness.start_run(first)
    original = await first.run_events(accepted["run_id"])

    later = await harness.connect(alice)
    await later.send({"type": "resume", "run_id": accepted["run_id"], "after_seq": 0})
    assert await later.run_events(accepted["run_id"]) == original
    await later.send({"type": "resume", "run_id": accepted["run_id"], "after_seq": 5})
    await later.ping_pong()


async def test_resume_of_another_users_run_is_refused_and_leaks_nothing(
    harness: Harness, alice: TestUser, bob: TestUser
) -> None:
    alices = await harness.connect(alice)
    accepted = await harness.start_run(alices)
    await alices.run_events(accepted["run_id"])

    bobs = await harness.connect(bob)
    await bobs.send({"type": "resume", "run_id": accepted["run_id"], "after_seq": 0})
    refusal = await bobs.recv()
    assert refusal["type"] == "error"
    assert refusal["error_code"] == "RUN_NOT_FOUND"
    assert alice.user_id not in refusal["message"]
    await bobs.ping_pong()  # no event was sent before the pong

    # The refusal is indistinguishable from a run that never existed.
    await bobs.send({"type": "resume", "run_id": "run_01m80000000000000000000000", "after_seq": 0})
    assert await bobs.recv() == refusal


async def test_cancel_run_of_another_user_is_refused_and_the_run_continues(
    harness: Harness, alice: TestUser, bob: TestUser
) -> None:
    harness.runs.pause_after = {1}
    alices = await harness.connect(alice)
    accepted = await harness.start_run(alices)
    run_id = accepted["run_id"]
    assert (await alices.recv())["seq"] == 1
    await harness.runs.next_pause()

    bobs = await harness.connect(bob)
    await bobs.send({"type": "cancel_run", "run_id": run_id})
    refusal = await bobs.recv()
    assert refusal["error_code"] == "RUN_NOT_FOUND"
    await bobs.ping_pong()

    harness.runs.proceed()
    rest = await alices.run_events(run_id)
    assert [event["type"] for event in rest] == list(SEQUENCE[1:])  # not cancelled
    await bobs.ping_pong()  # and bob still saw nothing of it


async def test_cancel_own_run_ends_it_with_agent_error(harness: Harness, alice: TestUser) -> None:
    harness.runs.pause_after = {1}
    client = await harness.connect(alice)
    accepted = await harness.start_run(client)
    run_id = accepted["run_id"]
    assert (await client.recv())["type"] == "agent_started"
    await harness.runs.next_pause()
    await client.send({"type": "cancel_run", "run_id": run_id})
    events = await client.run_events(run_id)
    assert [event["type"] for event in events] == ["agent_error"]
    assert events[0]["seq"] == 2
    assert events[0]["payload"]["error_type"] == "cancelled"


async def test_cancel_of_an_unknown_run_is_refused(harness: Harness, alice: TestUser) -> None:
    client = await harness.connect(alice)
    await client.send({"type": "cancel_run", "run_id": "run_01m80000000000000000000000"})
    assert (await client.recv())["error_code"] == "RUN_NOT_FOUND"
    await client.ping_pong()
