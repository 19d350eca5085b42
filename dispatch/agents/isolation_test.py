"""Acceptance: many users running agents at once never touch each other's data or events,
no agent instance is shared, and every tool call has exactly one event pair."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

from dispatch.agents.api import AgentSettings, RunHandle, RunState
from dispatch.agents.testing import AgentDeployment, agent_deployment
from dispatch.engine.api import ToolCaller
from dispatch.engine.testing import make_caller
from dispatch.tools.api import EventType, RunEventEnvelope

USERS = 20
RUNS_PER_USER = 5


def marker(user_index: int, run_index: int) -> str:
    return f"marker{user_index:02d}x{run_index}"


def message_for(user_index: int, run_index: int) -> str:
    # Three tool calls: add a note, search this user's notes, a calculation.
    return (
        f"remember that {marker(user_index, run_index)} belongs here\n"
        f"search notes for marker{user_index:02d}x\n"
        f"what is {user_index} * {run_index + 1}"
    )


def assert_tool_events_pair_up(events: tuple[RunEventEnvelope, ...], tool_calls: int) -> None:
    """Per-event counting: exactly one executing and one completed per tool call, each
    completed right after its executing, and seq gapless from 1."""
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    counts = Counter(event.type for event in events)
    assert counts[EventType.TOOL_EXECUTING] == tool_calls
    assert counts[EventType.TOOL_COMPLETED] == tool_calls
    tool_events = [
        e for e in events if e.type in (EventType.TOOL_EXECUTING, EventType.TOOL_COMPLETED)
    ]
    for executing, completed in zip(tool_events[::2], tool_events[1::2], strict=True):
        assert executing.type is EventType.TOOL_EXECUTING
        assert completed.type is EventType.TOOL_COMPLETED
        assert completed.seq == executing.seq + 1
        assert executing.payload["tool_name"] == completed.payload["tool_name"]
    assert counts[EventType.AGENT_STARTED] == 1
    assert counts[EventType.AGENT_COMPLETED] + counts[EventType.AGENT_ERROR] == 1
    assert events[0].type is EventType.AGENT_STARTED
    assert events[-1].type is EventType.AGENT_COMPLETED


async def test_twenty_users_five_simultaneous_runs_each(tmp_path: Path) -> None:
    settings = AgentSettings(max_runs_per_user=RUNS_PER_USER, max_runs_total=USERS * RUNS_PER_USER)
    async with agent_deployment(tmp_path, settings=settings) as deployment:
        runner = deployment.runner
        callers = [make_caller() for _ in range(USERS)]

        async def start(user_index: int, run_index: int) -> RunHandle:
            return await runner.start_run(
                callers[user_index], "assistant", message_for(user_index, run_index)
            )

        handles = await asyncio.gather(
            *(start(u, r) for u in range(USERS) for r in range(RUNS_PER_USER))
        )
        # All 100 are in progress together: nobody was refused.
        assert runner.stats().refused_user_limit == 0
        infos = await asyncio.gather(
            *(
                runner.wait_run(callers[index // RUNS_PER_USER], handle.run_id)
                for index, handle in enumerate(handles)
            )
        )
        assert [info.state for info in infos] == [RunState.COMPLETED] * (USERS * RUNS_PER_USER)

        await _check_notes_stay_with_their_owner(deployment, callers)
        await _check_events_carry_only_their_own_run(deployment, callers, handles)
        _check_no_instance_shared(deployment, handles)
        assert deployment.leftovers() == {"runs": 0, "dispatchers": 0, "scopes": 0}


async def _check_notes_stay_with_their_owner(
    deployment: AgentDeployment, callers: list[ToolCaller]
) -> None:
    for user_index, caller in enumerate(callers):
        async with deployment.data.create_user_context(caller.context) as scope:
            notes = sorted(note.content for note in await scope.notes.list(limit=100))
        assert notes == sorted(
            f"{marker(user_index, run_index)} belongs here" for run_index in range(RUNS_PER_USER)
        )


async def _check_events_carry_only_their_own_run(
    deployment: AgentDeployment, callers: list[ToolCaller], handles: list[RunHandle]
) -> None:
    all_run_ids = {handle.run_id for handle in handles}
    for index, handle in enumerate(handles):
        user_index = index // RUNS_PER_USER
        caller = callers[user_index]
        events = deployment.sinks.for_run(caller.user_id, handle.run_id).events
        assert {event.run_id for event in events} == {handle.run_id}
        assert {event.thread_id for event in events} == {handle.thread_id}
        text = json.dumps([event.to_wire() for event in events])
        # No other run's ID and no other user's marker or user ID appears anywhere.
        assert not any(run_id in text for run_id in all_run_ids - {handle.run_id})
        for other_index, other in enumerate(callers):
            if other_index != user_index:
                assert f"marker{other_index:02d}x" not in text
                assert other.user_id not in text
        async with deployment.data.create_user_context(caller.context) as scope:
            usage = await scope.tool_usage.list(run_id=handle.run_id)
        assert len(usage) == 3
        assert_tool_events_pair_up(events, tool_calls=len(usage))


def _check_no_instance_shared(deployment: AgentDeployment, handles: list[RunHandle]) -> None:
    instances = deployment.instances
    assert len(instances) == len(handles)
    for position, agent in enumerate(instances):
        for other in instances[position + 1 :]:
            assert agent is not other
            assert agent.events is not other.events
    assert sorted(agent.context.run_id for agent in instances) == sorted(
        handle.run_id for handle in handles
    )
