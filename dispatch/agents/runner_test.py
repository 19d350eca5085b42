"""AgentRunner over the real packages: runs, persistence, limits, timeouts, cancellation,
owner checks and clean-up."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from auth.api import Plan
from context.api import new_run_id
from dispatch.agents.api import (
    AgentService,
    AgentSettings,
    AgentUnavailableError,
    ErrorType,
    InvalidAgentCallerError,
    InvalidRunRequestError,
    RunHandle,
    RunLimitExceededError,
    RunnerClosedError,
    RunNotFoundError,
    RunState,
    ThreadNotFoundError,
    UnknownAgentError,
)
from dispatch.agents.conftest import Gate
from dispatch.agents.testing import (
    AgentDeployment,
    HangingProvider,
    agent_deployment,
    llm_factory_with,
    tool_then_answer,
)
from dispatch.engine.api import ToolCaller
from dispatch.engine.testing import make_caller
from dispatch.llm.api import ToolCall
from dispatch.llm.manager import LLMManagerFactory
from dispatch.llm.testing import ScriptedProvider, text_result
from dispatch.tools.api import EventType, RunEventEnvelope
from dispatch.tools.sinks import BufferingEventSink

IDLE = {"runs": 0, "dispatchers": 0, "scopes": 0}


def sink_of(
    deployment: AgentDeployment, caller: ToolCaller, handle: RunHandle
) -> BufferingEventSink:
    return deployment.sinks.for_run(caller.user_id, handle.run_id)


def types_of(events: tuple[RunEventEnvelope, ...]) -> list[str]:
    return [event.type.value for event in events]


def assert_gapless(events: tuple[RunEventEnvelope, ...]) -> None:
    assert [event.seq for event in events] == list(range(1, len(events) + 1))


# -- a successful run -------------------------------------------------------------------------


async def test_assistant_run_calls_tools_answers_and_is_recorded(
    deployment: AgentDeployment,
) -> None:
    caller = make_caller(Plan.FREE)
    runner = deployment.runner
    service: AgentService = runner
    handle = await service.start_run(
        caller, "assistant", "remember that the cat is called Tom\nwhat is 6 * 7"
    )
    assert handle.agent_name == "assistant"
    info = await runner.wait_run(caller, handle.run_id)
    assert info.state is RunState.COMPLETED
    assert info.started_at is not None and info.finished_at is not None
    assert info.created_at <= info.started_at <= info.finished_at
    assert info.result is not None and "42" in info.result and "Tom" in info.result

    events = sink_of(deployment, caller, handle).events
    assert types_of(events) == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "tool_executing",
        "tool_completed",
        "agent_thinking",
        "agent_completed",
    ]
    assert_gapless(events)
    assert {event.run_id for event in events} == {handle.run_id}
    assert {event.thread_id for event in events} == {handle.thread_id}
    assert {event.request_id for event in events} == {caller.context.request_id}
    assert [e.payload["tool_name"] for e in events if e.type is EventType.TOOL_EXECUTING] == [
        "notes.add",
        "calculator",
    ]
    assert events[1].payload["step"] == 1 and events[6].payload["step"] == 2
    assert events[-1].payload["success"] is True

    async with deployment.data.create_user_context(caller.context) as scope:
        notes = [note.content for note in await scope.notes.list()]
        thread = await scope.threads.get(handle.thread_id)
        messages = await scope.messages.list(handle.thread_id)
        usage = await scope.tool_usage.list(run_id=handle.run_id)
    assert notes == ["the cat is called Tom"]
    assert thread.title.startswith("remember that the cat")
    assert [(m.role.value, m.run_id) for m in messages] == [
        ("user", handle.run_id),
        ("assistant", handle.run_id),
    ]
    assert messages[1].content == info.result
    assert sorted(u.tool_name for u in usage) == ["calculator", "notes.add"]
    assert deployment.leftovers() == IDLE
    assert runner.stats().finished_by_state == {"completed": 1}


async def test_a_second_run_continues_the_callers_own_thread(deployment: AgentDeployment) -> None:
    caller = make_caller()
    first = await deployment.runner.start_run(caller, "notes", "add first")
    await deployment.runner.wait_run(caller, first.run_id)
    second = await deployment.runner.start_run(
        caller, "notes", "add second", thread_id=first.thread_id
    )
    assert second.thread_id == first.thread_id and second.run_id != first.run_id
    await deployment.runner.wait_run(caller, second.run_id)
    async with deployment.data.create_user_context(caller.context) as scope:
        messages = await scope.messages.list(first.thread_id)
        runs = await scope.runs.list(thread_id=first.thread_id)
    assert len(messages) == 4 and len(runs) == 2


async def test_runs_complete_without_a_live_websocket(tmp_path: Path) -> None:
    class NoConnection:
        def __init__(self) -> None:
            self.refused = 0

        async def emit(
            self, event_type: str, *, agent_name: str, payload: Mapping[str, object]
        ) -> bool:
            self.refused += 1
            return False

    sinks: list[NoConnection] = []

    def no_connection(ctx: Any, agent_name: str) -> NoConnection:
        sink = NoConnection()
        sinks.append(sink)
        return sink

    async with agent_deployment(tmp_path, event_sink_factory=no_connection) as deployment:
        caller = make_caller()
        handle = await deployment.runner.start_run(caller, "assistant", "note: offline works")
        info = await deployment.runner.wait_run(caller, handle.run_id)
        assert info.state is RunState.COMPLETED
        async with deployment.data.create_user_context(caller.context) as scope:
            assert [n.content for n in await scope.notes.list()] == ["offline works"]
        assert len(sinks) == 1 and sinks[0].refused == 6
        assert deployment.leftovers() == IDLE


# -- refused requests ---------------------------------------------------------------------------


async def test_unknown_agent_and_bad_requests_are_refused_without_a_slot(
    deployment: AgentDeployment,
) -> None:
    caller = make_caller()
    runner = deployment.runner
    with pytest.raises(UnknownAgentError):
        await runner.start_run(caller, "planner", "hello")
    for message in ["", "   ", "x" * (AgentSettings().max_message_chars + 1), "a\x00b"]:
        with pytest.raises(InvalidRunRequestError):
            await runner.start_run(caller, "assistant", message)
    for thread_id in ["", "../../etc", "thr_" + "x" * 200, "none"]:
        with pytest.raises(InvalidRunRequestError):
            await runner.start_run(caller, "assistant", "hi", thread_id=thread_id)
    bare_context: Any = caller.context
    with pytest.raises(InvalidAgentCallerError):
        await runner.start_run(bare_context, "assistant", "hi")
    assert deployment.leftovers() == IDLE
    assert runner.stats().started == 0


async def test_another_users_thread_is_not_found(deployment: AgentDeployment) -> None:
    alice, mallory = make_caller(), make_caller()
    handle = await deployment.runner.start_run(alice, "notes", "add alice private")
    await deployment.runner.wait_run(alice, handle.run_id)
    with pytest.raises(ThreadNotFoundError):
        await deployment.runner.start_run(
            mallory, "notes", "search private", thread_id=handle.thread_id
        )
    assert deployment.leftovers() == IDLE
    async with deployment.data.create_user_context(alice.context) as scope:
        assert len(await scope.messages.list(handle.thread_id)) == 2


# -- limits -------------------------------------------------------------------------------------


async def test_per_user_limit_refuses_at_once_and_leaves_others_alone(
    tmp_path: Path,
) -> None:
    hanging = HangingProvider()
    async with agent_deployment(tmp_path, llm=llm_factory_with(hanging)) as deployment:
        runner = deployment.runner
        alice, bob = make_caller(), make_caller()
        handles = [await runner.start_run(alice, "assistant", f"hello {i}") for i in range(3)]
        with pytest.raises(RunLimitExceededError) as refused:
            await runner.start_run(alice, "assistant", "one too many")
        assert refused.value.scope == "user"
        assert refused.value.grpc_status_name == "RESOURCE_EXHAUSTED"
        bob_handle = await runner.start_run(bob, "assistant", "bob is fine")
        assert runner.stats().active_runs_per_user == {alice.user_id: 3, bob.user_id: 1}
        assert runner.stats().refused_user_limit == 1
        # Finishing one of alice's runs frees her slot.
        await runner.cancel_run(alice, handles[0].run_id)
        replacement = await runner.start_run(alice, "assistant", "now there is room")
        hanging.release()
        for handle in [*handles[1:], replacement]:
            assert (await runner.wait_run(alice, handle.run_id)).state is RunState.COMPLETED
        assert (await runner.wait_run(bob, bob_handle.run_id)).state is RunState.COMPLETED
        assert deployment.leftovers() == IDLE


async def test_global_limit_refuses_everyone(tmp_path: Path) -> None:
    hanging = HangingProvider()
    settings = AgentSettings(max_runs_per_user=5, max_runs_total=2)
    async with agent_deployment(
        tmp_path, settings=settings, llm=llm_factory_with(hanging)
    ) as deployment:
        runner = deployment.runner
        callers = [make_caller() for _ in range(3)]
        await runner.start_run(callers[0], "assistant", "one")
        await runner.start_run(callers[1], "assistant", "two")
        with pytest.raises(RunLimitExceededError) as refused:
            await runner.start_run(callers[2], "assistant", "three")
        assert refused.value.scope == "global"
        hanging.release()


# -- timeout and cancellation ---------------------------------------------------------------------


async def test_timed_out_run_ends_with_one_timeout_error_and_frees_its_slot(
    tmp_path: Path,
) -> None:
    hanging = HangingProvider()
    settings = AgentSettings(max_runs_per_user=1, run_timeout_seconds=0.2)
    async with agent_deployment(
        tmp_path, settings=settings, llm=llm_factory_with(hanging)
    ) as deployment:
        caller = make_caller()
        handle = await deployment.runner.start_run(caller, "assistant", "think forever")
        info = await deployment.runner.wait_run(caller, handle.run_id)
        assert info.state is RunState.TIMED_OUT
        assert info.error_type == "timeout"
        events = sink_of(deployment, caller, handle).events
        # However far the run got before its time was up, it ends with one timeout error.
        kinds = types_of(events)
        assert kinds[-1] == "agent_error" and kinds.count("agent_error") == 1
        assert "agent_completed" not in kinds
        assert events[-1].payload["error_type"] == "timeout"
        assert events[-1].payload["recoverable"] is True
        assert_gapless(events)
        assert deployment.leftovers() == IDLE
        # The slot is free again: with a limit of one, a new run is accepted.
        assert deployment.runner.stats().active_runs_per_user == {}
        hanging.release()
        again = await deployment.runner.start_run(caller, "assistant", "second try")
        assert (await deployment.runner.wait_run(caller, again.run_id)).state.is_terminal


async def test_cancelled_run_ends_with_one_cancelled_error_and_frees_its_slot(
    tmp_path: Path,
) -> None:
    hanging = HangingProvider()
    settings = AgentSettings(max_runs_per_user=1)
    async with agent_deployment(
        tmp_path, settings=settings, llm=llm_factory_with(hanging)
    ) as deployment:
        caller = make_caller()
        handle = await deployment.runner.start_run(caller, "assistant", "hello")
        await hanging.entered.wait()
        info = await deployment.runner.cancel_run(caller, handle.run_id)
        assert info.state is RunState.CANCELLED and info.error_type == "cancelled"
        events = sink_of(deployment, caller, handle).events
        assert types_of(events) == ["agent_started", "agent_error"]
        assert events[-1].payload["error_type"] == "cancelled"
        assert deployment.leftovers() == IDLE
        # Cancelling again changes nothing and still reports the run.
        assert (await deployment.runner.cancel_run(caller, handle.run_id)).state is (
            RunState.CANCELLED
        )
        assert sink_of(deployment, caller, handle).of_type(EventType.AGENT_ERROR) == [events[-1]]
        hanging.release()
        again = await deployment.runner.start_run(caller, "assistant", "again")
        assert (await deployment.runner.wait_run(caller, again.run_id)).state is RunState.COMPLETED


async def test_cancelling_during_a_tool_call_closes_its_event_pair(
    tmp_path: Path, gate: Gate
) -> None:
    scripted = ScriptedProvider("scripted", default=tool_then_answer("test.gate", {"label": "g"}))
    async with agent_deployment(
        tmp_path, llm=llm_factory_with(scripted), extra_tools=[gate.tool()]
    ) as deployment:
        caller = make_caller()
        handle = await deployment.runner.start_run(caller, "assistant", "use the gate")
        await gate.entered.wait()
        info = await deployment.runner.cancel_run(caller, handle.run_id)
        assert info.state is RunState.CANCELLED
        events = sink_of(deployment, caller, handle).events
        assert types_of(events) == [
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
            "agent_error",
        ]
        assert events[3].payload["success"] is False
        assert_gapless(events)
        assert deployment.leftovers() == IDLE


async def test_a_run_cancelled_before_it_begins_still_ends_properly(
    deployment: AgentDeployment,
) -> None:
    caller = make_caller()
    handle = await deployment.runner.start_run(caller, "assistant", "what is 1 + 1")
    # No await between start and cancel: the run's task has not begun yet.
    assert deployment.runner.cancel_run_nowait(caller, handle.run_id)
    info = await deployment.runner.wait_run(caller, handle.run_id)
    assert info.state is RunState.CANCELLED
    events = sink_of(deployment, caller, handle).events
    assert types_of(events) == ["agent_error"]
    assert deployment.leftovers() == IDLE


async def test_shutting_down_cancels_runs_in_progress(tmp_path: Path) -> None:
    hanging = HangingProvider()
    async with agent_deployment(tmp_path, llm=llm_factory_with(hanging)) as deployment:
        caller = make_caller()
        handle = await deployment.runner.start_run(caller, "assistant", "hello")
        await hanging.entered.wait()
        await deployment.runner.aclose()
        assert (await deployment.runner.get_run(caller, handle.run_id)).state is (
            RunState.CANCELLED
        )
        with pytest.raises(RunnerClosedError):
            await deployment.runner.start_run(caller, "assistant", "too late")
        assert deployment.leftovers() == IDLE


# -- failures -------------------------------------------------------------------------------------


async def test_llm_failure_ends_the_run_with_one_llm_error(tmp_path: Path) -> None:
    llm = LLMManagerFactory(daily_token_budget=1)
    async with agent_deployment(tmp_path, llm=llm) as deployment:
        caller = make_caller()
        handle = await deployment.runner.start_run(caller, "assistant", "what is 2 + 2")
        info = await deployment.runner.wait_run(caller, handle.run_id)
        assert info.state is RunState.FAILED and info.error_type == "llm_error"
        events = sink_of(deployment, caller, handle).events
        assert types_of(events) == ["agent_started", "agent_error"]
        assert events[-1].payload["recoverable"] is True
        assert "budget" in str(events[-1].payload["error_message"])
        assert deployment.leftovers() == IDLE


async def test_step_limit_ends_the_run(tmp_path: Path) -> None:
    always_calls = ScriptedProvider(
        "scripted",
        default=text_result(
            "",
            tool_calls=(
                ToolCall(id="call_1", name="calculator", arguments={"expression": "1 + 1"}),
            ),
        ),
    )
    settings = AgentSettings(max_steps=2)
    async with agent_deployment(
        tmp_path, settings=settings, llm=llm_factory_with(always_calls)
    ) as deployment:
        caller = make_caller()
        handle = await deployment.runner.start_run(caller, "assistant", "loop")
        info = await deployment.runner.wait_run(caller, handle.run_id)
        assert info.state is RunState.FAILED and info.error_type == ErrorType.STEP_LIMIT.value
        events = sink_of(deployment, caller, handle).events
        assert types_of(events) == [
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_completed",
            "agent_thinking",
            "agent_error",
        ]
        assert always_calls.calls[-1].tool_choice == "none"
        assert deployment.leftovers() == IDLE


# -- owner checks ---------------------------------------------------------------------------------


async def test_runs_are_visible_and_cancellable_by_their_owner_only(tmp_path: Path) -> None:
    hanging = HangingProvider()
    async with agent_deployment(tmp_path, llm=llm_factory_with(hanging)) as deployment:
        runner = deployment.runner
        alice, mallory = make_caller(), make_caller()
        handle = await runner.start_run(alice, "assistant", "alice's secret plan")
        await hanging.entered.wait()
        with pytest.raises(RunNotFoundError) as not_yours:
            await runner.get_run(mallory, handle.run_id)
        with pytest.raises(RunNotFoundError) as not_found:
            await runner.get_run(mallory, new_run_id())
        assert not_yours.value.message == not_found.value.message
        with pytest.raises(RunNotFoundError):
            await runner.cancel_run(mallory, handle.run_id)
        assert not runner.cancel_run_nowait(mallory, handle.run_id)
        for hostile in ["", "x" * 10_000, "run_' OR 1=1 --"]:
            with pytest.raises(RunNotFoundError):
                await runner.get_run(mallory, hostile)
        # The run is untouched by all of that.
        assert (await runner.get_run(alice, handle.run_id)).state is RunState.RUNNING
        hanging.release()
        assert (await runner.wait_run(alice, handle.run_id)).state is RunState.COMPLETED
        assert (await runner.cancel_run(alice, handle.run_id)).state is RunState.COMPLETED
        events = deployment.sinks.for_run(alice.user_id, handle.run_id).events
        assert types_of(events)[-1] == "agent_completed"


async def test_a_failing_sink_factory_refuses_the_run_and_records_it(tmp_path: Path) -> None:
    def broken(ctx: Any, agent_name: str) -> Any:
        raise ConnectionError("event transport is down")

    async with agent_deployment(tmp_path, event_sink_factory=broken) as deployment:
        caller = make_caller()
        with pytest.raises(AgentUnavailableError):
            await deployment.runner.start_run(caller, "notes", "add x")
        assert deployment.leftovers() == IDLE
        async with deployment.data.create_user_context(caller.context) as scope:
            runs = await scope.runs.list()
        assert [(run.status.value, (run.error or "").split(":")[0]) for run in runs] == [
            ("failed", "internal_error")
        ]
