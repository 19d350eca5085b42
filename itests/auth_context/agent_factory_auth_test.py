"""Auth through the agent factory: a run acts as the user whose token started it.

Each scenario runs in both compositions (``inprocess``: the runner with a verified
caller from ``platform.caller``; ``grpc``: the AgentService over gRPC, the caller taken
from the verified token by the server). The model is the deterministic local provider,
a hanging one where a run must stay in progress, or, where the scenario needs a model
that asks for a given tool, the OpenAI-compatible stub server on loopback. Users run
concurrently; each scenario checks that runs, their events and what they wrote belong to
their own user, and that nothing stays open.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import JsonValue, SecretStr

from auth.api import Plan
from context.api import IDKind, UserExecutionContext, parse_id
from dispatch.agents.api import AgentPermissionDeniedError, RunNotFoundError, RunState
from dispatch.agents.testing import HangingProvider, llm_factory_with
from dispatch.engine.api import PermissionGroup, ToolCaller, ToolDefinition
from dispatch.engine.registry import Tool, ToolInput, ToolInvocation, define_tool
from dispatch.llm.settings import LLMSettings
from dispatch.llm.stub_server import (
    ChatCompletionsStub,
    RecordedRequest,
    StubResponse,
    StubToolCall,
)
from dispatch.tools.api import EventType, RunEventEnvelope
from itests.auth_context.platform import (
    UserSession,
    composition,
    open_deployment,
    wire_text,
)

THEME = "auth through the agent factory"

__all__ = ["composition"]  # the fixture, imported for pytest

PRO_TOOL = "note_insights"


def tool_events(events: list[RunEventEnvelope], tool: str) -> list[RunEventEnvelope]:
    return [
        event
        for event in events
        if event.type is EventType.TOOL_COMPLETED and event.payload["tool_name"] == tool
    ]


def assert_complete(events: list[RunEventEnvelope], run_id: str, thread_id: str) -> None:
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert {(event.run_id, event.thread_id) for event in events} == {(run_id, thread_id)}
    assert events[0].type is EventType.AGENT_STARTED
    assert events[-1].type is EventType.AGENT_COMPLETED


async def test_an_agent_run_started_with_a_users_token_acts_on_that_users_notes_only(
    composition: str, tmp_path: Path
) -> None:
    async with open_deployment(composition, tmp_path) as deployment:
        alice, bob = await deployment.new_users("alice", "bob")
        # Both users already keep a note about the launch, in the same words.
        await asyncio.gather(
            alice.add_note("launch checklist kept by alice"),
            bob.add_note("launch checklist kept by bob"),
        )

        async def run(session: UserSession, name: str) -> list[RunEventEnvelope]:
            caller = await session.caller()
            handle, events = await session.run(
                caller,
                "assistant",
                f"remember that {name} moves the launch to Friday; "
                "what do you remember about launch",
            )
            assert_complete(events, handle.run_id, handle.thread_id)
            return events

        alice_events, bob_events = await asyncio.gather(run(alice, "alice"), run(bob, "bob"))

        for events, own, other in ((alice_events, "alice", "bob"), (bob_events, "bob", "alice")):
            (added,) = tool_events(events, "notes.add")
            (found,) = tool_events(events, "notes.search")
            assert added.payload["success"] is True
            assert found.payload["success"] is True
            summary = str(found.payload["result_summary"])
            assert f"launch checklist kept by {own}" in summary
            assert f"{own} moves the launch to Friday" in summary
            assert other not in wire_text(events)
        assert await alice.notes() == [
            "alice moves the launch to Friday",
            "launch checklist kept by alice",
        ]
        assert await bob.notes() == [
            "bob moves the launch to Friday",
            "launch checklist kept by bob",
        ]
        await deployment.assert_idle()


class _NoArguments(ToolInput):
    """No arguments."""


async def _count_own_notes(invocation: ToolInvocation, args: _NoArguments) -> JsonValue:
    return {"notes": len(await invocation.data.notes.list())}


def pro_tool() -> Tool[_NoArguments]:
    """A tool of the analytics group: the pro plan and up."""
    return define_tool(
        name=PRO_TOOL,
        title="Note insights",
        description="Counts the caller's notes (analytics: pro plan and up).",
        group=PermissionGroup.ANALYTICS,
        input_model=_NoArguments,
        handler=_count_own_notes,
    )


class ToolAskingModel:
    """The stub model's behaviour: asks for :data:`PRO_TOOL` whatever it was offered,
    answers once a tool result is in, and records which tools each user was offered
    (users are told apart by the ``[user:...]`` tag their messages carry)."""

    def __init__(self) -> None:
        self.offered: dict[str, list[list[str]]] = {}

    def __call__(self, request: RecordedRequest) -> StubResponse:
        body = request.json()
        messages = body["messages"]
        if any(message["role"] == "tool" for message in messages):
            return StubResponse.completion("done")
        text = next(m["content"] for m in messages if m["role"] == "user")
        tag = text.split("[user:", 1)[1].split("]", 1)[0]
        names = [tool["function"]["name"] for tool in body.get("tools", [])]
        self.offered.setdefault(tag, []).append(names)
        return StubResponse.completion(
            None, tool_calls=[StubToolCall(id="call_insights", name=PRO_TOOL, arguments="{}")]
        )


async def test_each_users_plan_in_the_token_decides_which_tools_that_users_run_may_use(
    composition: str, tmp_path: Path
) -> None:
    model = ToolAskingModel()
    async with (
        ChatCompletionsStub(handler=model) as stub,
        open_deployment(
            composition,
            tmp_path,
            extra_tools=[pro_tool()],
            llm_settings=LLMSettings(
                providers=("openai",),
                openai_base_url=stub.base_url,
                openai_api_key=SecretStr("stub-key"),
                retry_max_attempts=1,
            ),
        ) as deployment,
    ):
        free_account, pro_account = await asyncio.gather(
            deployment.register("free"), deployment.register("pro")
        )
        admin = deployment.platform.auth
        await admin.update_account(pro_account.user_id, plan=Plan.PRO)
        pro = await deployment.session(pro_account, await deployment.login(pro_account))
        free = await deployment.session(free_account)
        await deployment.platform.auth.update_account(free_account.user_id, plan=Plan.PRO)
        # The free user's account is now pro, but the token it holds still says free.

        async def run(session: UserSession, tag: str) -> tuple[ToolCaller, RunEventEnvelope]:
            caller = await session.caller()
            handle, events = await session.run(caller, "assistant", f"[user:{tag}] insights")
            assert_complete(events, handle.run_id, handle.thread_id)
            (completed,) = tool_events(events, PRO_TOOL)
            return caller, completed

        (free_caller, denied), (pro_caller, allowed) = await asyncio.gather(
            run(free, "free"), run(pro, "pro")
        )
        assert (free_caller.plan, pro_caller.plan) == (Plan.FREE, Plan.PRO)
        assert denied.payload["success"] is False
        assert str(denied.payload["result_summary"]).startswith("permission_denied")
        assert allowed.payload["success"] is True
        assert json.loads(str(allowed.payload["result_summary"])) == {"notes": 0}
        # What each run offered its model follows the plan in its token.
        assert PRO_TOOL not in model.offered["free"][0]
        assert set(model.offered["pro"][0]) == {*model.offered["free"][0], PRO_TOOL}

        # A new token carries the new plan: the same user's next run may use the tool.
        upgraded = await deployment.session(free_account, await deployment.login(free_account))
        upgraded_caller, now_allowed = await run(upgraded, "upgraded")
        assert upgraded_caller.plan is Plan.PRO
        assert now_allowed.payload["success"] is True
        assert PRO_TOOL in model.offered["upgraded"][0]
        definitions: list[ToolDefinition] = list(await free.engine.list_tools(free_caller))
        assert PRO_TOOL not in {definition.name for definition in definitions}
        await deployment.assert_idle()


async def test_another_users_token_cannot_cancel_or_read_a_run(
    composition: str, tmp_path: Path
) -> None:
    model = HangingProvider(trigger="ponder")
    async with open_deployment(
        composition, tmp_path, llm_factory=llm_factory_with(model)
    ) as deployment:
        alice, bob = await deployment.new_users("alice", "bob")
        alice_caller, bob_caller = await asyncio.gather(alice.caller(), bob.caller())
        hanging = await alice.start_run(alice_caller, "assistant", "ponder the launch date")
        alice_events = asyncio.ensure_future(hanging.events())
        await asyncio.wait_for(model.entered.wait(), 20)

        async def bob_tries() -> list[str]:
            messages = []
            with pytest.raises(RunNotFoundError) as read:
                await bob.get_run(bob_caller, hanging.run_id)
            messages.append(str(read.value))
            with pytest.raises(RunNotFoundError) as cancel:
                await bob.agents.cancel_run(bob_caller, hanging.run_id)
            messages.append(str(cancel.value))
            if deployment.grpc:
                # A client lying about the context: Bob's token with Alice's request context.
                lying = bob_caller.model_copy(update={"context": alice_caller.context})
                with pytest.raises(AgentPermissionDeniedError):
                    await bob.agents.cancel_run(lying, hanging.run_id)
                with pytest.raises(AgentPermissionDeniedError):
                    await bob.get_run(lying, hanging.run_id)
            return messages

        refusals, (bob_handle, bob_events) = await asyncio.gather(
            bob_tries(), bob.run(bob_caller, "assistant", "what is 2+2?")
        )
        assert bob_events[-1].type is EventType.AGENT_COMPLETED
        for message in refusals:
            for secret in (alice.user_id, hanging.run_id, hanging.thread_id):
                assert secret not in message

        still = await alice.get_run(alice_caller, hanging.run_id)
        assert still.state is RunState.RUNNING
        assert not alice_events.done()
        with pytest.raises(RunNotFoundError):
            await alice.get_run(alice_caller, bob_handle.run_id)

        cancelled = await alice.agents.cancel_run(alice_caller, hanging.run_id)
        assert cancelled.state is RunState.CANCELLED
        events = await alice_events
        assert events[-1].type is EventType.AGENT_ERROR
        assert events[-1].payload["error_type"] == "cancelled"
        assert [event.type for event in events].count(EventType.AGENT_ERROR) == 1
        assert (await bob.get_run(bob_caller, bob_handle.run_id)).state is RunState.COMPLETED
        await deployment.assert_idle()


async def test_concurrent_runs_of_two_users_are_persisted_under_their_own_users(
    composition: str, tmp_path: Path
) -> None:
    runs_each = 3
    async with open_deployment(composition, tmp_path) as deployment:
        alice, bob = await deployment.new_users("alice", "bob")
        alice_caller, bob_caller = await asyncio.gather(alice.caller(), bob.caller())
        plan = [
            (session, caller, f"remember that {name} item {index} is stored")
            for session, caller, name in ((alice, alice_caller, "alice"), (bob, bob_caller, "bob"))
            for index in range(runs_each)
        ]
        finished = await asyncio.gather(
            *(session.run(caller, "assistant", message) for session, caller, message in plan)
        )
        handles: dict[str, list[str]] = {alice.user_id: [], bob.user_id: []}
        threads: dict[str, set[str]] = {alice.user_id: set(), bob.user_id: set()}
        for (session, _, _), (handle, events) in zip(plan, finished, strict=True):
            assert events[-1].type is EventType.AGENT_COMPLETED
            handles[session.user_id].append(handle.run_id)
            threads[session.user_id].add(handle.thread_id)

        for session, caller, name, other in (
            (alice, alice_caller, "alice", bob),
            (bob, bob_caller, "bob", alice),
        ):
            own_runs = handles[session.user_id]
            async with session.data.create_user_context(caller.context) as scope:
                recorded = await scope.runs.list()
                recorded_threads = await scope.threads.list()
                messages = [
                    message.content
                    for thread in recorded_threads
                    for message in await scope.messages.list(thread.id)
                    if message.role.value == "user"
                ]
            assert sorted(run.id for run in recorded) == sorted(own_runs)
            assert {run.status.value for run in recorded} == {"completed"}
            assert {thread.id for thread in recorded_threads} == threads[session.user_id]
            assert sorted(messages) == [
                f"remember that {name} item {index} is stored" for index in range(runs_each)
            ]
            for run_id in own_runs:
                info = await session.get_run(caller, run_id)
                assert info.state is RunState.COMPLETED
            for run_id in handles[other.user_id]:
                with pytest.raises(RunNotFoundError):
                    await session.get_run(caller, run_id)
            assert await session.notes() == [
                f"{name} item {index} is stored" for index in range(runs_each)
            ]
        await deployment.assert_idle()


async def test_a_runs_events_carry_the_runs_own_user_derived_identifiers_only(
    composition: str, tmp_path: Path
) -> None:
    async with open_deployment(composition, tmp_path) as deployment:
        alice, bob = await deployment.new_users("alice", "bob")

        async def runs_of(session: UserSession, name: str) -> list[dict[str, object]]:
            async def one(index: int) -> dict[str, object]:
                caller = await session.caller()
                started = await session.start_run(
                    caller, "assistant", f"remember that {name} owns item {index}; what is 6*7"
                )
                events = await started.events()
                return {
                    "user_id": session.user_id,
                    "context": caller.context,
                    "run_id": started.run_id,
                    "thread_id": started.thread_id,
                    "events": events,
                    "marker": f"{name} owns item {index}",
                }

            return list(await asyncio.gather(one(0), one(1)))

        alice_runs, bob_runs = await asyncio.gather(runs_of(alice, "alice"), runs_of(bob, "bob"))
        runs = alice_runs + bob_runs
        for run in runs:
            events = run["events"]
            ctx = run["context"]
            assert isinstance(events, list)
            assert isinstance(ctx, UserExecutionContext)
            run_id, thread_id = str(run["run_id"]), str(run["thread_id"])
            assert parse_id(run_id).kind is IDKind.RUN
            assert parse_id(thread_id).kind is IDKind.THREAD
            assert_complete(events, run_id, thread_id)
            # The request that started the run is the one every event answers.
            assert {event.request_id for event in events} == {ctx.request_id}
            assert ctx.user_id == run["user_id"]
            text = wire_text(events)
            assert str(run["marker"]) in text
            assert str(run["user_id"]) not in text  # an envelope names no user at all
            for other in runs:
                if other is run:
                    continue
                other_ctx = other["context"]
                assert isinstance(other_ctx, UserExecutionContext)
                for foreign in (
                    str(other["run_id"]),
                    str(other["thread_id"]),
                    other_ctx.request_id,
                    str(other["marker"]),
                ):
                    assert foreign not in text
                if other["user_id"] != run["user_id"]:
                    assert str(other["user_id"]) not in text
        await deployment.assert_idle()
