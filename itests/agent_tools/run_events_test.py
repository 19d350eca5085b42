"""Agent runs with their WebSocket events: each run's events reach its owner, whole.

Clients are real ``websockets`` connections authenticated with each user's own token. In
process, the platform's gateway starts runs on the platform's runner; over gRPC, a separate
gateway node starts them on the served AgentService (with the user's token) and re-emits
the streamed events to its own connections. Runs whose message contains ``hang`` are held
by the loopback model until released (or until they are cancelled or time out).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dispatch.agents.api import RunState
from itests.agent_tools.outside_llm import HANG, OutsideModel
from itests.agent_tools.platform import Member, assert_mentions_none, composition, deployment
from itests.agent_tools.wire import (
    assert_wire_run,
    collect_runs,
    connections,
    expect_error,
    start_refused,
    start_runs,
)

THEME = "agent runs with their WebSocket events"
__all__ = ["composition"]  # the fixture, imported for pytest


def tool_message(member: Member, day: str = "Friday") -> str:
    """A message the local model answers with two tool calls (notes.add, calculator)."""
    return f"remember that {member.user_id} launches on {day}; what is 12*(3+4)?"


def others_of(member: Member, members: list[Member]) -> list[str]:
    return [ident for other in members if other is not member for ident in other.identifiers()]


def brief(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What every connection of a user sees alike of one run."""
    return [(e["type"], e["seq"], e["run_id"], e["thread_id"], e["payload"]) for e in events]


async def test_run_events_reach_only_the_owners_connections_with_gapless_seq(
    tmp_path: Path, composition: str
) -> None:
    async with deployment(tmp_path, composition) as dep:
        url = await dep.ws_url()
        members = await dep.members("viewer", 3)
        tokens = [member.account.access_token for member in members for _ in range(2)]
        async with connections(url, tokens) as clients:
            pairs = [clients[2 * n : 2 * n + 2] for n in range(len(members))]
            accepted = await asyncio.gather(
                *(
                    start_runs(pair[0], "assistant", [tool_message(member)])
                    for member, pair in zip(members, pairs, strict=True)
                )
            )
            run_ids = [reply[0]["run_id"] for reply in accepted]
            seen = await asyncio.gather(
                *(
                    collect_runs(client, [run_id])
                    for run_id, pair in zip(run_ids, pairs, strict=True)
                    for client in pair
                )
            )
            for index, member in enumerate(members):
                run_id, reply = run_ids[index], accepted[index][0]
                first, second = seen[2 * index][run_id], seen[2 * index + 1][run_id]
                assert_wire_run(first, run_id)
                assert {event["thread_id"] for event in first} == {reply["thread_id"]}
                types = [event["type"] for event in first]
                assert types.count("tool_executing") == types.count("tool_completed") == 2
                # The user's other connection saw the same run, event for event.
                assert brief(second) == brief(first)
                assert_mentions_none(first, others_of(member, members))
                assert member.user_id in str(first)
            for client in clients:
                await client.assert_quiet()
        infos = await asyncio.gather(
            *(dep.gateway_run_ended(m, r) for m, r in zip(members, run_ids, strict=True))
        )
        assert [info.state for info in infos] == [RunState.COMPLETED] * len(members)
        for member in members:
            assert [note.content for note in await member.notes()] == [
                f"{member.user_id} launches on Friday"
            ]
        await dep.assert_idle()


async def test_a_cancelled_run_ends_with_one_agent_error_and_frees_the_users_slot(
    tmp_path: Path, composition: str
) -> None:
    async with (
        OutsideModel() as model,
        deployment(
            tmp_path,
            composition,
            llm_factory=model.llm_factory(),
            settings={"max_runs_per_user": 1},
        ) as dep,
    ):
        url = await dep.ws_url()
        owner, bystander = await dep.members("user", 2)
        tokens = [owner.account.access_token, bystander.account.access_token]
        async with connections(url, tokens) as (owner_ws, bystander_ws):
            (owned,), (other,) = await asyncio.gather(
                start_runs(owner_ws, "assistant", [f"{HANG} owner"]),
                start_runs(bystander_ws, "assistant", [f"{HANG} bystander"]),
            )
            await model.wait_held(2)
            # The owner's one slot is taken: a second run is refused, for the owner only.
            refused = await start_refused(owner_ws, "assistant", "one more")
            assert refused["error_code"] == "RUN_REJECTED"
            assert "RUN_LIMIT_EXCEEDED" in refused["message"]
            # Nobody but the owner can cancel the run.
            foreign = await expect_error(
                bystander_ws, {"type": "cancel_run", "run_id": owned["run_id"]}
            )
            assert foreign["error_code"] == "RUN_NOT_FOUND"
            await owner_ws.send({"type": "cancel_run", "run_id": owned["run_id"]})
            events = (await collect_runs(owner_ws, [owned["run_id"]]))[owned["run_id"]]
            assert_wire_run(events, owned["run_id"], ending="agent_error")
            types = [event["type"] for event in events]
            assert types.count("agent_error") == 1
            assert "agent_completed" not in types
            assert events[-1]["payload"]["error_type"] == "cancelled"
            info = await dep.gateway_run_ended(owner, owned["run_id"])
            assert info.state is RunState.CANCELLED
            # The slot is free again: the owner's next run is accepted and completes.
            (again,) = await start_runs(owner_ws, "assistant", ["after the cancel"])
            after = (await collect_runs(owner_ws, [again["run_id"]]))[again["run_id"]]
            assert_wire_run(after, again["run_id"])
            # The bystander's run went on untouched and ends normally once answered.
            model.release()
            theirs = (await collect_runs(bystander_ws, [other["run_id"]]))[other["run_id"]]
            assert_wire_run(theirs, other["run_id"])
            assert_mentions_none(theirs, owner.identifiers())
            await owner_ws.assert_quiet()
            await bystander_ws.assert_quiet()
        await dep.gateway_run_ended(bystander, other["run_id"])
        await dep.assert_idle()


async def test_a_timed_out_run_ends_with_one_agent_error_and_frees_the_users_slot(
    tmp_path: Path, composition: str
) -> None:
    async with (
        OutsideModel() as model,
        deployment(
            tmp_path,
            composition,
            llm_factory=model.llm_factory(),
            settings={"max_runs_per_user": 1, "run_timeout_seconds": 2.0},
        ) as dep,
    ):
        url = await dep.ws_url()
        slow, quick = await dep.members("user", 2)
        tokens = [slow.account.access_token, quick.account.access_token]
        async with connections(url, tokens) as (slow_ws, quick_ws):
            (stuck,) = await start_runs(slow_ws, "assistant", [f"{HANG} forever"])
            await model.wait_held(1)
            refused = await start_refused(slow_ws, "assistant", "meanwhile")
            assert "RUN_LIMIT_EXCEEDED" in refused["message"]

            async def quick_runs() -> list[list[dict[str, Any]]]:
                done = []
                for n in range(3):
                    (run,) = await start_runs(quick_ws, "assistant", [f"quick {n}"])
                    events = (await collect_runs(quick_ws, [run["run_id"]]))[run["run_id"]]
                    assert_wire_run(events, run["run_id"])
                    await dep.gateway_run_ended(quick, run["run_id"])
                    done.append(events)
                return done

            timed_out, quick_events = await asyncio.gather(
                collect_runs(slow_ws, [stuck["run_id"]]), quick_runs()
            )
            events = timed_out[stuck["run_id"]]
            assert_wire_run(events, stuck["run_id"], ending="agent_error")
            assert [event["type"] for event in events].count("agent_error") == 1
            assert events[-1]["payload"]["error_type"] == "timeout"
            assert events[-1]["payload"]["recoverable"] is True
            info = await dep.gateway_run_ended(slow, stuck["run_id"])
            assert info.state is RunState.TIMED_OUT
            for quick_run in quick_events:
                assert_mentions_none(quick_run, slow.identifiers())
            # The slot is free again.
            (again,) = await start_runs(slow_ws, "assistant", ["and now?"])
            after = (await collect_runs(slow_ws, [again["run_id"]]))[again["run_id"]]
            assert_wire_run(after, again["run_id"])
            await slow_ws.assert_quiet()
            await quick_ws.assert_quiet()
        await dep.assert_idle()


async def test_simultaneous_runs_of_one_user_are_each_gapless_and_complete(
    tmp_path: Path, composition: str
) -> None:
    async with deployment(tmp_path, composition, settings={"max_runs_per_user": 3}) as dep:
        url = await dep.ws_url()
        members = await dep.members("busy", 3)
        tokens = [member.account.access_token for member in members for _ in range(2)]
        async with connections(url, tokens) as clients:
            pairs = [clients[2 * n : 2 * n + 2] for n in range(len(members))]

            def messages(member: Member) -> list[str]:
                return [tool_message(member, day) for day in ("Monday", "Tuesday", "Sunday")]

            accepted = await asyncio.gather(
                *(
                    start_runs(pair[0], "assistant", messages(member))
                    for member, pair in zip(members, pairs, strict=True)
                )
            )
            for index, member in enumerate(members):
                run_ids = [reply["run_id"] for reply in accepted[index]]
                assert len(set(run_ids)) == 3
                assert len({reply["thread_id"] for reply in accepted[index]}) == 3
                starter, watcher = await asyncio.gather(
                    collect_runs(pairs[index][0], run_ids), collect_runs(pairs[index][1], run_ids)
                )
                for run_id, reply in zip(run_ids, accepted[index], strict=True):
                    assert_wire_run(starter[run_id], run_id)
                    assert {event["thread_id"] for event in starter[run_id]} == {reply["thread_id"]}
                    assert brief(watcher[run_id]) == brief(starter[run_id])
                    assert_mentions_none(starter[run_id], others_of(member, members))
                for client in pairs[index]:
                    await client.assert_quiet()
        for member in members:
            contents = sorted(note.content for note in await member.notes())
            assert contents == sorted(
                f"{member.user_id} launches on {day}" for day in ("Monday", "Tuesday", "Sunday")
            )
        await dep.assert_idle()


async def test_the_per_user_run_limit_refuses_one_user_while_another_starts_runs(
    tmp_path: Path, composition: str
) -> None:
    async with (
        OutsideModel() as model,
        deployment(
            tmp_path,
            composition,
            llm_factory=model.llm_factory(),
            settings={"max_runs_per_user": 2},
        ) as dep,
    ):
        url = await dep.ws_url()
        members = await dep.members("user", 3)
        limited, *others = members
        async with connections(url, [m.account.access_token for m in members]) as clients:
            limited_ws, *other_clients = clients
            held = await start_runs(limited_ws, "assistant", [f"{HANG} 1", f"{HANG} 2"])
            await model.wait_held(2)

            async def run_two(member: Member, ws: Any) -> dict[str, list[dict[str, Any]]]:
                accepted = await start_runs(ws, "assistant", ["first", "second"])
                return await collect_runs(ws, [reply["run_id"] for reply in accepted])

            refusal, *served = await asyncio.gather(
                start_refused(limited_ws, "assistant", "a third"),
                *(run_two(m, ws) for m, ws in zip(others, other_clients, strict=True)),
            )
            assert refusal["error_code"] == "RUN_REJECTED"
            assert "RUN_LIMIT_EXCEEDED" in refusal["message"]
            assert_mentions_none(refusal, [i for m in others for i in m.identifiers()])
            for member, runs in zip(others, served, strict=True):
                assert len(runs) == 2
                for run_id, events in runs.items():
                    assert_wire_run(events, run_id)
                    assert_mentions_none(events, limited.identifiers())
                    await dep.gateway_run_ended(member, run_id)
            stats = dep.runner.stats()
            assert stats.active_runs_per_user == {limited.user_id: 2}
            assert stats.refused_user_limit == 1
            model.release()
            finished = await collect_runs(limited_ws, [reply["run_id"] for reply in held])
            for run_id, events in finished.items():
                assert_wire_run(events, run_id)
                await dep.gateway_run_ended(limited, run_id)
            (again,) = await start_runs(limited_ws, "assistant", ["room again"])
            events = (await collect_runs(limited_ws, [again["run_id"]]))[again["run_id"]]
            assert_wire_run(events, again["run_id"])
            for client in clients:
                await client.assert_quiet()
        await dep.assert_idle()
