"""Agent factory + tool dispatcher: one fresh agent and one dispatcher per run, per user.

Every scenario runs in process and over gRPC (the agent service, data and LLM behind the
platform's gRPC server). The outside model is a loopback chat-completions server; runs
whose message contains ``hang`` are held there until released, so a scenario can look at
the platform while many runs of many users are in flight at once.
"""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path

from dispatch.agents.api import AgentSettings, ErrorType, RunState
from dispatch.agents.assistant import AssistantAgent
from dispatch.llm.manager import ContextLLMManager
from dispatch.llm.stub_server import RecordedRequest, StubResponse, StubToolCall
from dispatch.tools.api import MAX_DISPATCHERS_PER_USER, EventType
from dispatch.tools.sinks import BufferingEventSink
from itests.agent_tools.outside_llm import (
    HANG,
    OutsideModel,
    last_user_message,
    tool_then_text,
)
from itests.agent_tools.platform import (
    Member,
    RunRecord,
    assert_complete_run,
    assert_mentions_none,
    composition,
    deployment,
)

THEME = "agent factory + tool dispatcher"
__all__ = ["composition"]  # the fixture, imported for pytest


def _calculation(message: str) -> dict[str, str]:
    """The calculator call of a message: its last word is a number to multiply by 7."""
    return {"expression": f"{message.rsplit(maxsplit=1)[-1]}*7"}


def _others(member: Member, members: list[Member]) -> list[str]:
    return [ident for other in members if other is not member for ident in other.identifiers()]


def last_user_message_of(record: RunRecord) -> str:
    """The message a run answered, read back from its final answer."""
    result = record.terminal.payload["result"]
    assert isinstance(result, dict)
    return str(result["answer"]).removeprefix("answer to: ")


async def test_every_run_gets_a_fresh_agent_instance_never_shared_across_users(
    tmp_path: Path, composition: str
) -> None:
    async with (
        OutsideModel() as model,
        deployment(tmp_path, composition, llm_factory=model.llm_factory()) as dep,
    ):
        factory = dep.platform.internals.agent_factory
        members = await dep.members("user", 4)
        before = factory.stats()
        assert before.live_instances == 0
        started = await asyncio.gather(
            *(
                dep.start(member, "assistant", f"{HANG} for {member.user_id} run {n}")
                for member in members
                for n in range(2)
            )
        )
        await model.wait_held(len(started))
        during = factory.stats()
        # Eight runs in flight are eight distinct objects alive at once: none is shared.
        assert during.instances_created - before.instances_created == len(started)
        assert during.live_instances == len(started)
        assert during.instances_by_type.get("assistant", 0) == len(started)
        model.release()
        records = await asyncio.gather(*(run.finish() for run in started))
        for run, record in zip(started, records, strict=True):
            assert_complete_run(record)
            answer = record.terminal.payload["result"]
            assert isinstance(answer, dict)
            assert str(answer["answer"]).startswith(f"answer to: {HANG} for {run.member.user_id}")
            assert_mentions_none([e.to_wire() for e in record.events], _others(run.member, members))
        assert len({record.run_id for record in records}) == len(records)
        # The factory keeps no instance once its run is over (no pool, no cache).
        gc.collect()
        assert factory.stats().live_instances == 0

        # Asked directly for the users in turn, it builds a new instance every time, bound
        # to that user's context, with an LLM manager of that context.
        built: list[tuple[Member, AssistantAgent]] = []
        for _ in range(2):
            for member in members:
                agent = factory.create_agent_instance(
                    "assistant", member.caller, sink=BufferingEventSink(member.context)
                )
                assert isinstance(agent, AssistantAgent)
                built.append((member, agent))
        flat = [agent for _, agent in built]
        assert len({id(agent) for agent in flat}) == len(flat)
        assert len({agent.instance_id for agent in flat}) == len(flat)
        for member, agent in built:
            assert agent.context.user_id == member.user_id
            manager = agent.llm
            assert isinstance(manager, ContextLLMManager)
            assert manager.context.user_id == member.user_id
        assert factory.stats().live_instances == len(flat)
        del built, flat, agent, manager
        gc.collect()
        assert factory.stats().live_instances == 0
        await dep.assert_idle()


async def test_every_run_gets_its_own_dispatcher_released_when_the_run_ends(
    tmp_path: Path, composition: str
) -> None:
    answer = tool_then_text("calculator", _calculation)
    async with (
        OutsideModel(answer) as model,
        deployment(
            tmp_path,
            composition,
            llm_factory=model.llm_factory(),
            settings={"max_runs_per_user": 3},
        ) as dep,
    ):
        dispatchers = dep.platform.internals.dispatchers
        members = await dep.members("user", 4)
        before = dispatchers.stats()
        started = await asyncio.gather(
            *(
                dep.start(member, "assistant", f"{HANG} {member.user_id} {10 * index + n}")
                for index, member in enumerate(members)
                for n in range(3)
            )
        )
        await model.wait_held(len(started))
        during = dispatchers.stats()
        assert during.live_dispatchers == len(started)
        assert during.dispatchers_per_user == {member.user_id: 3 for member in members}
        assert during.created - before.created == len(started)
        model.release()
        records = await asyncio.gather(*(run.finish() for run in started))
        for run, record in zip(started, records, strict=True):
            assert_complete_run(record)
            # The run's own dispatcher ran the run's own tool call, reported in its events.
            executing = record.of_type(EventType.TOOL_EXECUTING)
            completed = record.of_type(EventType.TOOL_COMPLETED)
            assert len(executing) == len(completed) == 1
            number = int(last_user_message_of(record).split()[-1])
            assert executing[0].payload["tool_input"] == {"expression": f"{number}*7"}
            assert completed[0].payload["success"] is True
            assert {event.agent_name for event in record.events} == {"assistant"}
            assert_mentions_none([e.to_wire() for e in record.events], _others(run.member, members))
        after = dispatchers.stats()
        assert after.live_dispatchers == 0
        assert after.dispatchers_per_user == {}
        assert after.cleaned_up - before.cleaned_up == len(started)
        assert after.leaked == 0
        await dep.assert_idle()


async def test_one_users_dispatcher_limit_leaves_other_users_unaffected(
    tmp_path: Path, composition: str
) -> None:
    answer = tool_then_text("calculator", _calculation)
    limit = MAX_DISPATCHERS_PER_USER
    async with (
        OutsideModel(answer) as model,
        deployment(
            tmp_path,
            composition,
            llm_factory=model.llm_factory(),
            settings={"max_runs_per_user": limit + 2},
        ) as dep,
    ):
        dispatchers = dep.platform.internals.dispatchers
        greedy, other = await asyncio.gather(dep.member("greedy"), dep.member("other"))
        held = await asyncio.gather(
            *(dep.start(greedy, "assistant", f"{HANG} {n}") for n in range(limit)),
            *(dep.start(other, "assistant", f"{HANG} {100 + n}") for n in range(2)),
        )
        await model.wait_held(limit + 2)
        assert dispatchers.stats().dispatchers_per_user == {
            greedy.user_id: limit,
            other.user_id: 2,
        }
        # Past the limit the greedy user's run ends with one tool_error; meanwhile the
        # other user still gets a dispatcher and a complete run.
        refused, served = await asyncio.gather(
            dep.run(greedy, "assistant", f"{HANG} {limit}"),
            dep.run(other, "assistant", "multiply 6"),
        )
        assert_complete_run(refused, completed=False)
        error = refused.terminal.payload
        assert error["error_type"] == ErrorType.TOOL_ERROR.value
        assert f"the limit is {limit}" in str(error["error_message"])
        assert refused.info.state is RunState.FAILED
        assert refused.of_type(EventType.TOOL_EXECUTING) == []
        assert_mentions_none(refused.events[-1].to_wire(), other.identifiers())
        assert_complete_run(served)
        assert served.of_type(EventType.TOOL_COMPLETED)[0].payload["success"] is True

        model.release()
        for record in await asyncio.gather(*(run.finish() for run in held)):
            assert_complete_run(record)
        # Freed slots: the greedy user gets dispatchers again.
        again = await dep.run(greedy, "assistant", "multiply 9")
        assert_complete_run(again)
        assert dispatchers.stats().rejected >= 1
        await dep.assert_idle()


async def test_concurrent_runs_of_many_users_each_touch_only_their_own_notes(
    tmp_path: Path, composition: str
) -> None:
    async with deployment(tmp_path, composition) as dep:
        members = await dep.members("writer", 6)
        secrets = {
            member.user_id: f"secret-{n}-{member.user_id[-6:]}" for n, member in enumerate(members)
        }

        async def write_and_search(member: Member) -> RunRecord:
            message = f"add launch code {secrets[member.user_id]} #launch; search launch"
            return await dep.run(member, "notes", message)

        records = await asyncio.gather(*(write_and_search(member) for member in members))
        notes_by_user = dict(
            zip(
                [member.user_id for member in members],
                await asyncio.gather(*(member.notes() for member in members)),
                strict=True,
            )
        )
        for member, record in zip(members, records, strict=True):
            assert_complete_run(record)
            others = [secrets[other.user_id] for other in members if other is not member]
            searched = record.of_type(EventType.TOOL_COMPLETED)[1].payload
            assert searched["tool_name"] == "notes.search"
            assert secrets[member.user_id] in json.dumps(searched)
            assert_mentions_none([e.to_wire() for e in record.events], others)
            assert_mentions_none(record.info.model_dump(mode="json"), others)
            notes = notes_by_user[member.user_id]
            assert [note.content for note in notes] == [
                f"launch code {secrets[member.user_id]} #launch"
            ]

        # A user naming another user's note ID deletes nothing; the owner still has it.
        thief, victim = members[0], members[1]
        victim_note = notes_by_user[victim.user_id][0]
        stolen, kept = await asyncio.gather(
            dep.run(thief, "notes", f"delete {victim_note.id}"),
            dep.run(victim, "notes", "search launch"),
        )
        assert_complete_run(stolen)
        deleted = stolen.of_type(EventType.TOOL_COMPLETED)[0].payload
        assert deleted["success"] is False
        assert_mentions_none(stolen.terminal.to_wire(), [secrets[victim.user_id], victim.user_id])
        assert secrets[victim.user_id] in json.dumps(kept.terminal.payload)
        assert [note.id for note in await victim.notes()] == [victim_note.id]
        assert len(await thief.notes()) == 1
        await dep.assert_idle()


def _failing_model(request: RecordedRequest) -> StubResponse:
    """``fail`` -> HTTP 500; ``loop`` -> a notes.add call every time (never an answer);
    anything else -> one calculator call, then a text answer."""
    message = last_user_message(request)
    if "fail" in message:
        return StubResponse.error(500, "the model is down")
    if "loop" in message:
        names = [spec["function"]["name"] for spec in request.json().get("tools", [])]
        name = next(name for name in names if name in ("notes.add", "notes_add"))
        arguments = json.dumps({"content": f"loop note {len(request.body)}"})
        return StubResponse.completion(
            None,
            tool_calls=[
                StubToolCall(id=f"call_{len(request.body)}", name=name, arguments=arguments)
            ],
        )
    return tool_then_text("calculator", _calculation)(request)


async def test_a_failed_run_releases_its_dispatcher_and_data_scopes(
    tmp_path: Path, composition: str
) -> None:
    agent_settings = AgentSettings(max_runs_per_user=4, max_steps=2, run_timeout_seconds=30)
    async with (
        OutsideModel(_failing_model) as model,
        deployment(
            tmp_path,
            composition,
            llm_factory=model.llm_factory(),
            agent_settings=agent_settings,
        ) as dep,
    ):
        dispatchers = dep.platform.internals.dispatchers
        data = dep.platform.internals.data
        unlucky, lucky = await asyncio.gather(dep.member("unlucky"), dep.member("lucky"))
        before = dispatchers.stats()
        failed = dep.run(unlucky, "assistant", "fail please")
        failed_again = dep.run(unlucky, "assistant", "fail again")
        looping = dep.run(unlucky, "assistant", "loop forever")
        served = [dep.run(lucky, "assistant", f"multiply {n}") for n in range(3)]
        first, second, third, *good = await asyncio.gather(failed, failed_again, looping, *served)

        for record in (first, second):
            assert_complete_run(record, completed=False)
            assert record.terminal.payload["error_type"] == ErrorType.LLM_ERROR.value
            assert record.info.state is RunState.FAILED
            assert record.info.error_type == ErrorType.LLM_ERROR.value
        assert_complete_run(third, completed=False)
        assert third.terminal.payload["error_type"] == ErrorType.STEP_LIMIT.value
        assert third.info.state is RunState.FAILED
        assert [e.payload["tool_name"] for e in third.of_type(EventType.TOOL_COMPLETED)] == [
            "notes.add"
        ]
        for record in good:
            assert_complete_run(record)
            assert_mentions_none([e.to_wire() for e in record.events], unlucky.identifiers())
        for record in (first, second, third):
            assert_mentions_none([e.to_wire() for e in record.events], lucky.identifiers())

        # Everything the failed runs held is back: dispatchers, data scopes, run slots.
        after = dispatchers.stats()
        assert after.live_dispatchers == 0
        assert after.created - before.created == 6
        assert after.cleaned_up - before.cleaned_up == 6
        assert after.leaked == 0
        assert data.stats().live_scopes == 0
        assert data.stats().connections_checked_out == 0
        # The unlucky user is not stuck: the next run gets all it needs.
        recovered = await dep.run(unlucky, "assistant", "multiply 3")
        assert_complete_run(recovered)
        assert [note.content for note in await lucky.notes()] == []
        assert len(await unlucky.notes()) == 1
        assert len(model.requests) >= 6
        await dep.assert_idle()
