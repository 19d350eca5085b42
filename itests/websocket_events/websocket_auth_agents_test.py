"""WebSocket auth + agent factory: runs started over a WebSocket act as the verified user.

Each scenario runs in both compositions: the gateway starting runs on the in-process
agent runner, and a gateway node starting them over the gRPC AgentService with the
user's own token. The model is the platform's deterministic local provider, or - where a
run must wait at a chosen point - the scripted outside LLM over the real wire protocol.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest

from context.api import new_run_id
from dispatch.agents.api import RunNotFoundError
from itests.websocket_events.deployment import Account, composition, deploy, eventually
from itests.websocket_events.outside_llm import Gate, ScriptedLLM, Step, scripted_llm
from itests.websocket_events.wsclient import (
    ProtocolClient,
    assert_complete_run,
    assert_never_mentioned,
)

__all__ = ["composition"]  # the fixture, imported for pytest

THEME = "WebSocket auth + agent factory"


async def test_start_agent_over_websocket_runs_as_the_authenticated_user(
    tmp_path: Path, composition: str
) -> None:
    async with deploy(tmp_path, composition) as d:
        alice, bob = await d.accounts_named("alice", "bob")
        alice_ws = await d.connect(alice)
        bob_ws = await d.connect(bob, via="subprotocol")  # the browser form of the token
        markers = {u.user_id: f"fact-{u.name}-{secrets.token_hex(4)}" for u in (alice, bob)}

        async def run(user: Account, ws: ProtocolClient) -> tuple[str, str]:
            accepted = await ws.start("assistant", f"remember that {markers[user.user_id]}")
            events = await ws.events_of(accepted["run_id"])
            assert_complete_run(events, accepted["run_id"])
            assert events[0]["thread_id"] == accepted["thread_id"]
            return accepted["run_id"], accepted["thread_id"]

        (alice_run, alice_thread), (bob_run, bob_thread) = await asyncio.gather(
            run(alice, alice_ws), run(bob, bob_ws)
        )

        # What each run did, it did as its own user: the note is that user's alone.
        for user in (alice, bob):
            notes = await d.notes_of(user)
            assert [note.content for note in notes] == [markers[user.user_id]]
        # Each run is recorded under its user, and is nobody else's.
        for user, run_id, thread_id in (
            (alice, alice_run, alice_thread),
            (bob, bob_run, bob_thread),
        ):
            info = await d.recorded_run(user, run_id)
            assert info.state.value == "completed"
            assert info.thread_id == thread_id
        assert d.runs.service_run_id(bob.user_id, alice_run) is None
        assert d.runs.service_run_id(alice.user_id, bob_run) is None
        alice_service_run = d.runs.service_run_id(alice.user_id, alice_run)
        assert alice_service_run is not None
        bob_caller = await d.platform.caller(bob.access_token)
        with pytest.raises(RunNotFoundError):
            await d.platform.internals.runner.get_run(bob_caller, alice_service_run)

        # A start_agent that names a user is refused outright: identity is the token's.
        started = d.platform.internals.runner.stats().started
        refused = await alice_ws.request_error(
            {
                "type": "start_agent",
                "agent": "assistant",
                "message": "remember that I am bob",
                "user_id": bob.user_id,
            }
        )
        assert refused["error_code"] == "INVALID_MESSAGE"
        assert bob.user_id not in json.dumps(refused)
        assert d.platform.internals.runner.stats().started == started
        assert [note.content for note in await d.notes_of(bob)] == [markers[bob.user_id]]
        await alice_ws.assert_quiet()
        await bob_ws.assert_quiet()

        assert_never_mentioned(
            [alice_ws], bob.footprint() | {bob_run, bob_thread, markers[bob.user_id]}
        )
        assert_never_mentioned(
            [bob_ws], alice.footprint() | {alice_run, alice_thread, markers[alice.user_id]}
        )
        await d.assert_idle()


async def test_run_accepted_precedes_the_runs_events_on_the_starting_connection(
    tmp_path: Path, composition: str
) -> None:
    async with deploy(tmp_path, composition) as d:
        alice, bob = await d.accounts_named("alice", "bob")
        starters = {u.user_id: await d.connect(u) for u in (alice, bob)}
        watchers = {u.user_id: await d.connect(u) for u in (alice, bob)}
        messages = ["what is 2+3", "remember that order matters; what is 3*3", "list threads"]

        async def pipelined(user: Account) -> list[str]:
            starter = starters[user.user_id]
            # Three starts in a row, without waiting for any reply.
            for index, message in enumerate(messages):
                await starter.send(
                    {
                        "type": "start_agent",
                        "agent": "assistant",
                        "message": message,
                        "client_msg_id": f"{user.name}-{index}",
                    }
                )
            accepted = [await starter.next_of_type("run_accepted") for _ in messages]
            assert [a["client_msg_id"] for a in accepted] == [
                f"{user.name}-{index}" for index in range(len(messages))
            ]
            run_ids = [a["run_id"] for a in accepted]
            assert len(set(run_ids)) == len(run_ids)
            for run_id in run_ids:
                assert_complete_run(await starter.events_of(run_id), run_id)
            frames = starter.frames
            for run_id in run_ids:
                positions = [i for i, f in enumerate(frames) if f.get("run_id") == run_id]
                first = positions[0]
                assert frames[first]["type"] == "run_accepted", frames[first]
                assert all("seq" in frames[i] for i in positions[1:])
            # The user's other connection sees the same runs' events, but no run_accepted.
            watcher = watchers[user.user_id]
            for run_id in run_ids:
                assert_complete_run(await watcher.events_of(run_id), run_id)
            assert not [f for f in watcher.frames if f.get("type") == "run_accepted"]
            await starter.assert_quiet()
            await watcher.assert_quiet()
            return run_ids

        alice_runs, bob_runs = await asyncio.gather(pipelined(alice), pipelined(bob))
        assert_never_mentioned(
            [starters[alice.user_id], watchers[alice.user_id]], bob.footprint() | set(bob_runs)
        )
        assert_never_mentioned(
            [starters[bob.user_id], watchers[bob.user_id]], alice.footprint() | set(alice_runs)
        )
        await d.assert_idle()


async def test_an_unknown_agent_gets_an_error_frame_and_the_connection_stays_usable(
    tmp_path: Path, composition: str
) -> None:
    async with deploy(tmp_path, composition) as d:
        alice, bob = await d.accounts_named("alice", "bob")
        alice_ws, bob_ws = await d.connect(alice), await d.connect(bob)
        unknown = f"no-such-agent-{secrets.token_hex(4)}"

        async def alice_part() -> str:
            error = await alice_ws.request_error(
                {"type": "start_agent", "agent": unknown, "message": "hello"}
            )
            assert error["error_code"] == "RUN_REJECTED"
            assert "AGENT_NOT_FOUND" in error["message"]
            malformed = await alice_ws.request_error({"type": "start_agent", "agent": ""})
            assert malformed["error_code"] == "INVALID_MESSAGE"
            await alice_ws.send_text("{not json")
            assert (await alice_ws.next_of_type("error"))["error_code"] == "INVALID_JSON"
            # The connection is as good as new: pings and runs work.
            await alice_ws.assert_quiet()
            accepted = await alice_ws.start("assistant", "what is 20+22")
            events = await alice_ws.events_of(accepted["run_id"])
            assert_complete_run(events, accepted["run_id"])
            assert "42" in json.dumps(events[-1]["payload"])
            return str(accepted["run_id"])

        async def bob_part() -> str:
            accepted = await bob_ws.start("assistant", "what is 6*7")
            assert_complete_run(await bob_ws.events_of(accepted["run_id"]), accepted["run_id"])
            return str(accepted["run_id"])

        alice_run, bob_run = await asyncio.gather(alice_part(), bob_part())
        stats = d.platform.internals.runner.stats()
        assert stats.started == 2  # the refused start created no run
        await alice_ws.assert_quiet()
        await bob_ws.assert_quiet()
        assert_never_mentioned([bob_ws], alice.footprint() | {alice_run, unknown})
        assert_never_mentioned([alice_ws], bob.footprint() | {bob_run})
        await d.assert_idle()


def hold(llm: ScriptedLLM, marker: str) -> Gate:
    """Runs whose message carries ``marker`` wait inside their first model call."""
    gate = Gate()
    llm.script(marker, Step(text=f"answer {marker}", gate=gate))
    return gate


async def test_the_per_user_run_limit_over_websocket_refuses_only_that_user(
    tmp_path: Path, composition: str
) -> None:
    async with (
        scripted_llm() as llm,
        deploy(tmp_path, composition, llm=llm, server={"max_runs_per_user": 2}) as d,
    ):
        alice, bob = await d.accounts_named("alice", "bob")
        alice_ws, bob_ws = await d.connect(alice), await d.connect(bob)
        markers = {
            (u.user_id, i): f"hold-{u.name}-{i}-{secrets.token_hex(3)}"
            for u in (alice, bob)
            for i in range(3)
        }
        gates = {key: hold(llm, marker) for key, marker in markers.items()}

        async def start(user: Account, ws: ProtocolClient, index: int) -> str:
            accepted = await ws.start("assistant", f"please {markers[(user.user_id, index)]}")
            return str(accepted["run_id"])

        # Alice reaches her limit of two runs in progress.
        alice_runs = [await start(alice, alice_ws, 0), await start(alice, alice_ws, 1)]
        # Her third start is refused while Bob starts two of his own at the same time.
        refused, bob_first, bob_second = await asyncio.gather(
            alice_ws.request_error(
                {
                    "type": "start_agent",
                    "agent": "assistant",
                    "message": f"please {markers[(alice.user_id, 2)]}",
                }
            ),
            start(bob, bob_ws, 0),
            start(bob, bob_ws, 1),
        )
        bob_runs = [bob_first, bob_second]
        assert refused["error_code"] == "RUN_REJECTED"
        assert "RUN_LIMIT_EXCEEDED" in refused["message"]
        stats = d.platform.internals.runner.stats()
        assert stats.active_runs_per_user == {alice.user_id: 2, bob.user_id: 2}
        assert stats.refused_user_limit == 1
        assert llm.calls(markers[(alice.user_id, 2)]) == 0  # the refused run never ran

        for (_, index), gate in gates.items():
            if index < 2:
                gate.open()
        for ws, runs in ((alice_ws, alice_runs), (bob_ws, bob_runs)):
            for run_id in runs:
                assert_complete_run(await ws.events_of(run_id), run_id)
        # Finished runs give their slots back: Alice may start again.
        await eventually(
            lambda: not d.platform.internals.runner.stats().active_runs,
            what="the finished runs to free their slots",
        )
        gates[(alice.user_id, 2)].open()
        again = await start(alice, alice_ws, 2)
        assert_complete_run(await alice_ws.events_of(again), again)
        await alice_ws.assert_quiet()
        await bob_ws.assert_quiet()
        assert_never_mentioned([alice_ws], bob.footprint() | set(bob_runs))
        assert_never_mentioned([bob_ws], alice.footprint() | {*alice_runs, again})
        await d.assert_idle()


async def test_cancel_run_over_websocket_ends_only_the_callers_own_run(
    tmp_path: Path, composition: str
) -> None:
    async with scripted_llm() as llm, deploy(tmp_path, composition, llm=llm) as d:
        alice, bob = await d.accounts_named("alice", "bob")
        alice_ws, bob_ws = await d.connect(alice), await d.connect(bob)
        alice_marker = f"long-task-alice-{secrets.token_hex(3)}"
        bob_marker = f"long-task-bob-{secrets.token_hex(3)}"
        alice_gate, bob_gate = hold(llm, alice_marker), hold(llm, bob_marker)
        alice_run, bob_run = (
            str(accepted["run_id"])
            for accepted in await asyncio.gather(
                alice_ws.start("assistant", f"do the {alice_marker}"),
                bob_ws.start("assistant", f"do the {bob_marker}"),
            )
        )
        await asyncio.gather(alice_gate.wait_entered(), bob_gate.wait_entered())

        # Each tries to cancel the other's run: both are told there is no such run.
        bob_try, alice_try, unknown = await asyncio.gather(
            bob_ws.request_error({"type": "cancel_run", "run_id": alice_run}),
            alice_ws.request_error({"type": "cancel_run", "run_id": bob_run}),
            bob_ws_unknown_cancel(bob_ws),
        )
        assert bob_try["error_code"] == alice_try["error_code"] == "RUN_NOT_FOUND"
        assert bob_try == alice_try == unknown
        assert d.platform.internals.runner.stats().active_runs_per_user == {
            alice.user_id: 1,
            bob.user_id: 1,
        }

        # Alice cancels her own run: it ends with one agent_error, and frees her slot.
        await alice_ws.send({"type": "cancel_run", "run_id": alice_run})
        alice_events = await alice_ws.events_of(alice_run)
        assert_complete_run(alice_events, alice_run, end="agent_error")
        assert alice_events[-1]["payload"]["error_type"] == "cancelled"
        assert (await d.recorded_run(alice, alice_run)).state.value == "cancelled"
        alice_gate.open()  # the model's late answer to the cancelled run goes nowhere
        await eventually(
            lambda: alice.user_id not in d.platform.internals.runner.stats().active_runs_per_user,
            what="Alice's slot to be freed",
        )
        # Bob's run went on and completes normally once the model answers.
        assert d.platform.internals.runner.stats().active_runs_per_user == {bob.user_id: 1}
        bob_gate.open()
        bob_events = await bob_ws.events_of(bob_run)
        assert_complete_run(bob_events, bob_run)
        assert (await d.recorded_run(bob, bob_run)).state.value == "completed"
        await alice_ws.assert_quiet()
        await bob_ws.assert_quiet()
        assert_never_mentioned([alice_ws], bob.footprint() | {bob_marker})
        assert_never_mentioned([bob_ws], alice.footprint() | {alice_marker})
        await d.assert_idle()


async def bob_ws_unknown_cancel(ws: ProtocolClient) -> dict[str, object]:
    """The answer to cancelling a run that never existed (for comparison)."""
    return await ws.request_error({"type": "cancel_run", "run_id": new_run_id()})
