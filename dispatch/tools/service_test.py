"""UnifiedToolDispatcher and its factory over the real engine, data factory and built-in
tools: exactly-once tool events in every outcome, the per-user limit, cleanup, and work
without a live WebSocket."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import grpc.aio
import pytest

from auth.api import Plan
from auth.interceptors import AuthServerInterceptor, auth_client_interceptors
from auth.service import LocalAuthService
from auth.testing import fast_settings
from data.factory import SqlDataAccessFactory
from dispatch.engine.api import CallerMismatchError, ToolCaller, ToolStatus
from dispatch.engine.engine import LocalToolExecutionEngine
from dispatch.engine.grpc_client import GrpcToolEngineClient
from dispatch.engine.grpc_server import add_tool_service
from dispatch.engine.permissions import ADMIN_ROLE
from dispatch.engine.testing import make_caller
from dispatch.tools.api import (
    DispatcherClosedError,
    DispatcherConstructionError,
    DispatcherFactoryClosedError,
    DispatcherLimitExceededError,
    EventType,
    InvalidDispatcherRequestError,
    RunEventEnvelope,
    ToolDispatcher,
)
from dispatch.tools.conftest import Gate
from dispatch.tools.sanitize import REDACTED
from dispatch.tools.service import ToolDispatcherFactory, UnifiedToolDispatcher
from dispatch.tools.sinks import BufferingEventSink

TOOL_EVENTS = (EventType.TOOL_EXECUTING, EventType.TOOL_COMPLETED)


def tool_events(sink: BufferingEventSink) -> list[RunEventEnvelope]:
    return sink.of_type(*TOOL_EVENTS)


def assert_one_pair_per_call(sink: BufferingEventSink, calls: list[str]) -> None:
    """Events alternate executing/completed, one pair per call in call order, gapless seq."""
    events = sink.events
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    pairs = [events[i : i + 2] for i in range(0, len(events), 2)]
    assert len(pairs) == len(calls)
    for (executing, completed), name in zip(pairs, calls, strict=True):
        assert executing.type is EventType.TOOL_EXECUTING
        assert completed.type is EventType.TOOL_COMPLETED
        assert executing.payload["tool_name"] == completed.payload["tool_name"] == name


class RefusingSink:
    """A sink with no live connection behind it: it refuses every event."""

    def __init__(self) -> None:
        self.calls = 0

    async def emit(
        self, event_type: str, *, agent_name: str, payload: Mapping[str, object]
    ) -> bool:
        self.calls += 1
        return False


class BrokenSink:
    """A sink whose transport fails on every event."""

    async def emit(
        self, event_type: str, *, agent_name: str, payload: Mapping[str, object]
    ) -> bool:
        raise ConnectionError("connection lost")


async def notes_of(data: SqlDataAccessFactory, caller: ToolCaller) -> list[str]:
    async with data.create_user_context(caller.context) as scope:
        return [note.content for note in await scope.notes.list()]


# -- construction ---------------------------------------------------------------------------


async def test_direct_construction_is_refused(dispatchers: ToolDispatcherFactory) -> None:
    caller = make_caller()
    sink = BufferingEventSink(caller.context)
    with pytest.raises(DispatcherConstructionError) as raised:
        UnifiedToolDispatcher(dispatchers, caller, sink, agent_name="x", dispatcher_id="dsp_1")
    assert raised.value.error_code == "DISPATCHER_FACTORY_REQUIRED"
    assert dispatchers.stats().live_dispatchers == 0


async def test_factory_refuses_bad_arguments(dispatchers: ToolDispatcherFactory) -> None:
    caller = make_caller()
    sink = BufferingEventSink(caller.context)
    with pytest.raises(InvalidDispatcherRequestError):
        # Hostile: a bare context carries no verified entitlements.
        dispatchers.create_for_context(cast(Any, caller.context), sink)
    with pytest.raises(InvalidDispatcherRequestError):
        dispatchers.create_for_context(caller, cast(Any, object()))  # hostile: not a sink
    with pytest.raises(InvalidDispatcherRequestError):
        dispatchers.create_for_context(caller, sink, agent_name="bad\nname")
    assert dispatchers.stats().live_dispatchers == 0


async def test_dispatcher_satisfies_the_protocol(dispatchers: ToolDispatcherFactory) -> None:
    caller = make_caller()
    async with dispatchers.create_for_context(caller, BufferingEventSink(caller.context)) as d:
        assert isinstance(d, ToolDispatcher)
        assert d.caller is caller


# -- exactly-once events --------------------------------------------------------------------


async def test_successful_call_emits_one_executing_then_one_completed(
    dispatchers: ToolDispatcherFactory, data_factory: SqlDataAccessFactory
) -> None:
    caller = make_caller()
    sink = BufferingEventSink(caller.context)
    async with dispatchers.create_for_context(caller, sink, agent_name="assistant") as dispatcher:
        result = await dispatcher.execute_tool(
            "notes.add", {"content": "buy milk", "tags": ["home"]}, tool_call_id="call_1"
        )
    assert result.status is ToolStatus.SUCCESS
    assert result.tool_call_id == "call_1"
    assert_one_pair_per_call(sink, ["notes.add"])
    executing, completed = sink.events
    assert executing.agent_name == completed.agent_name == "assistant"
    assert executing.run_id == caller.context.run_id
    assert executing.payload["tool_input"] == {"content": "buy milk", "tags": ["home"]}
    assert completed.payload["success"] is True
    assert "buy milk" in str(completed.payload["result_summary"])
    assert completed.payload["execution_time_ms"] == pytest.approx(result.execution_time_ms)
    assert await notes_of(data_factory, caller) == ["buy milk"]


@pytest.mark.parametrize(
    ("tool", "params", "status"),
    [
        ("no.such.tool", {}, ToolStatus.NOT_FOUND),
        ("calculator", {"expression": "().__class__"}, ToolStatus.INVALID_INPUT),
        ("calculator", {"expression": "1 / 0"}, ToolStatus.ERROR),
        ("system.stats", {}, ToolStatus.PERMISSION_DENIED),
        ("test.stuck", {}, ToolStatus.TIMEOUT),
    ],
)
async def test_failed_calls_still_emit_exactly_one_pair(
    dispatchers: ToolDispatcherFactory, tool: str, params: dict[str, object], status: ToolStatus
) -> None:
    caller = make_caller(Plan.FREE)
    sink = BufferingEventSink(caller.context)
    async with dispatchers.create_for_context(caller, sink) as dispatcher:
        result = await dispatcher.execute_tool(tool, params)
    assert result.status is status
    assert_one_pair_per_call(sink, [tool])
    completed = sink.events[1]
    assert completed.payload["success"] is False
    assert str(completed.payload["result_summary"]).startswith(status.value)


async def test_many_calls_give_one_pair_each_in_order(dispatchers: ToolDispatcherFactory) -> None:
    caller = make_caller()
    sink = BufferingEventSink(caller.context)
    calls = ["calculator", "time.now", "notes.add", "no.such", "notes.search", "calculator"]
    params: list[dict[str, object]] = [
        {"expression": "1 + 2"},
        {},
        {"content": "alpha"},
        {},
        {"query": "alpha"},
        {"expression": "2 ** 8"},
    ]
    async with dispatchers.create_for_context(caller, sink) as dispatcher:
        for name, args in zip(calls, params, strict=True):
            await dispatcher.execute_tool(name, args)
        metrics = dispatcher.metrics()
    assert_one_pair_per_call(sink, calls)
    assert metrics.tools_executed == 6
    assert metrics.successful_executions == 5
    assert metrics.failed_executions == 1
    assert metrics.calls_by_status == {"success": 5, "not_found": 1}
    assert metrics.events_emitted == 12
    assert metrics.events_undelivered == 0


async def test_cancelled_call_still_completes_its_event_pair(
    dispatchers: ToolDispatcherFactory, gate: Gate
) -> None:
    caller = make_caller()
    sink = BufferingEventSink(caller.context)
    async with dispatchers.create_for_context(caller, sink) as dispatcher:
        call = asyncio.create_task(dispatcher.execute_tool("test.gate", {"label": "x"}))
        await gate.entered.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    assert_one_pair_per_call(sink, ["test.gate"])
    assert sink.events[1].payload["success"] is False
    assert "cancelled" in str(sink.events[1].payload["result_summary"])
    assert dispatchers.stats().live_dispatchers == 0


async def test_closed_engine_gives_an_error_result_with_both_events(
    dispatchers: ToolDispatcherFactory, engine: LocalToolExecutionEngine
) -> None:
    caller = make_caller()
    sink = BufferingEventSink(caller.context)
    await engine.aclose()
    async with dispatchers.create_for_context(caller, sink) as dispatcher:
        result = await dispatcher.execute_tool("calculator", {"expression": "1 + 1"})
    assert result.status is ToolStatus.ERROR
    assert result.error_code == "ENGINE_CLOSED"
    assert_one_pair_per_call(sink, ["calculator"])


async def test_tool_input_in_events_is_sanitised(dispatchers: ToolDispatcherFactory) -> None:
    caller = make_caller()
    sink = BufferingEventSink(caller.context)
    hostile: dict[str, object] = {
        "content": "x" * 5000,
        "api_key": "sk-live-0123456789",
        "nested": {"Password": "hunter2", "ok": [1, 2, 3]},
        "blob": b"\x00\x01",
    }
    async with dispatchers.create_for_context(caller, sink) as dispatcher:
        result = await dispatcher.execute_tool("notes.add", hostile)
    assert result.status is ToolStatus.INVALID_INPUT
    shown = sink.events[0].payload["tool_input"]
    assert isinstance(shown, dict)
    assert shown["api_key"] == REDACTED
    assert shown["nested"] == {"Password": REDACTED, "ok": [1, 2, 3]}
    assert shown["blob"] == "<bytes>"
    assert isinstance(shown["content"], str) and len(shown["content"]) <= 1000
    assert "sk-live" not in str(sink.events) and "hunter2" not in str(sink.events)


async def test_hostile_names_and_arguments_are_failed_calls_not_crashes(
    dispatchers: ToolDispatcherFactory,
) -> None:
    caller = make_caller()
    sink = BufferingEventSink(caller.context)
    async with dispatchers.create_for_context(caller, sink) as dispatcher:
        not_a_name = await dispatcher.execute_tool(cast(Any, 42), {})
        control = await dispatcher.execute_tool("notes.add\n\x00", {})
        not_a_mapping = await dispatcher.execute_tool("notes.add", cast(Any, ["content"]))
    assert not_a_name.status is ToolStatus.NOT_FOUND
    assert control.status is ToolStatus.NOT_FOUND
    assert not_a_mapping.status is ToolStatus.INVALID_INPUT
    assert len(sink.events) == 6 and sink.rejected == 0
    assert [event.type for event in sink.events] == list(TOOL_EVENTS) * 3


# -- no WebSocket ---------------------------------------------------------------------------


@pytest.mark.parametrize("sink_kind", ["refusing", "broken"])
async def test_tools_run_without_a_live_websocket(
    dispatchers: ToolDispatcherFactory, data_factory: SqlDataAccessFactory, sink_kind: str
) -> None:
    caller = make_caller()
    sink: RefusingSink | BrokenSink = RefusingSink() if sink_kind == "refusing" else BrokenSink()
    async with dispatchers.create_for_context(caller, sink) as dispatcher:
        result = await dispatcher.execute_tool("notes.add", {"content": "offline note"})
        metrics = dispatcher.metrics()
    assert result.status is ToolStatus.SUCCESS
    assert await notes_of(data_factory, caller) == ["offline note"]
    assert metrics.events_emitted == 0
    assert metrics.events_undelivered == 2
    if isinstance(sink, RefusingSink):
        assert sink.calls == 2


# -- tools on offer -------------------------------------------------------------------------


async def test_list_tools_is_what_this_caller_may_use(dispatchers: ToolDispatcherFactory) -> None:
    free = make_caller(Plan.FREE)
    admin = make_caller(Plan.ENTERPRISE, roles=(ADMIN_ROLE,))
    async with dispatchers.create_for_context(free, BufferingEventSink(free.context)) as d:
        free_tools = {tool.name for tool in await d.list_tools()}
    async with dispatchers.create_for_context(admin, BufferingEventSink(admin.context)) as d:
        admin_tools = {tool.name for tool in await d.list_tools()}
    assert {"notes.add", "notes.search", "calculator"} <= free_tools
    assert "system.stats" not in free_tools
    assert "system.stats" in admin_tools


# -- per-user limit and cleanup -------------------------------------------------------------


async def test_at_most_ten_live_dispatchers_per_user(dispatchers: ToolDispatcherFactory) -> None:
    alice = make_caller()
    bob = make_caller()
    mine = [
        dispatchers.create_for_context(alice, BufferingEventSink(alice.context)) for _ in range(10)
    ]
    with pytest.raises(DispatcherLimitExceededError) as refused:
        dispatchers.create_for_context(alice, BufferingEventSink(alice.context))
    assert refused.value.grpc_status_name == "RESOURCE_EXHAUSTED"
    assert alice.user_id not in refused.value.message
    # Another user is unaffected.
    theirs = dispatchers.create_for_context(bob, BufferingEventSink(bob.context))
    stats = dispatchers.stats()
    assert stats.dispatchers_per_user == {alice.user_id: 10, bob.user_id: 1}
    assert stats.rejected == 1
    # Cleanup frees the slot.
    await mine[0].cleanup()
    again = dispatchers.create_for_context(alice, BufferingEventSink(alice.context))
    for dispatcher in [*mine, theirs, again]:
        await dispatcher.cleanup()
    assert dispatchers.stats().live_dispatchers == 0


async def test_cleaned_up_dispatcher_is_unusable(dispatchers: ToolDispatcherFactory) -> None:
    caller = make_caller()
    sink = BufferingEventSink(caller.context)
    dispatcher = dispatchers.create_for_context(caller, sink)
    await dispatcher.cleanup()
    await dispatcher.cleanup()  # idempotent
    assert dispatcher.closed
    with pytest.raises(DispatcherClosedError):
        await dispatcher.execute_tool("calculator", {"expression": "1 + 1"})
    with pytest.raises(DispatcherClosedError):
        await dispatcher.list_tools()
    with pytest.raises(DispatcherClosedError):
        async with dispatcher:
            pass
    assert sink.events == ()
    assert dispatchers.stats().cleaned_up == 1


async def test_a_dropped_dispatcher_frees_its_slot(dispatchers: ToolDispatcherFactory) -> None:
    caller = make_caller()
    dispatcher = dispatchers.create_for_context(caller, BufferingEventSink(caller.context))
    assert dispatchers.live_count(caller.user_id) == 1
    del dispatcher
    gc.collect()
    stats = dispatchers.stats()
    assert stats.live_dispatchers == 0
    assert stats.leaked == 1


async def test_closing_the_factory_cleans_up_everything(dispatchers: ToolDispatcherFactory) -> None:
    caller = make_caller()
    live = [
        dispatchers.create_for_context(caller, BufferingEventSink(caller.context)) for _ in range(3)
    ]
    await dispatchers.aclose()
    assert all(dispatcher.closed for dispatcher in live)
    assert dispatchers.stats().live_dispatchers == 0
    with pytest.raises(DispatcherFactoryClosedError):
        dispatchers.create_for_context(caller, BufferingEventSink(caller.context))


# -- isolation -------------------------------------------------------------------------------


async def test_concurrent_users_see_only_their_own_events_and_notes(
    dispatchers: ToolDispatcherFactory, data_factory: SqlDataAccessFactory
) -> None:
    callers = [make_caller() for _ in range(6)]
    sinks = [BufferingEventSink(caller.context) for caller in callers]

    async def work(caller: ToolCaller, sink: BufferingEventSink) -> None:
        async with dispatchers.create_for_context(caller, sink) as dispatcher:
            for index in range(3):
                await dispatcher.execute_tool(
                    "notes.add", {"content": f"{caller.user_id} note {index}"}
                )
            await dispatcher.execute_tool("notes.search", {"query": "note"})

    await asyncio.gather(*(work(c, s) for c, s in zip(callers, sinks, strict=True)))
    for caller, sink in zip(callers, sinks, strict=True):
        assert {event.run_id for event in sink.events} == {caller.context.run_id}
        text = str([event.payload for event in sink.events])
        assert all(other.user_id not in text for other in callers if other is not caller)
        notes = await notes_of(data_factory, caller)
        assert sorted(notes) == [f"{caller.user_id} note {i}" for i in range(3)]


# -- an engine that refuses the caller (over gRPC) ------------------------------------------


async def test_engine_refusal_propagates_after_tool_completed(
    tmp_path: Path, engine: LocalToolExecutionEngine
) -> None:
    async with await LocalAuthService.create(fast_settings(tmp_path / "auth")) as auth:
        account = await auth.register("mallory@example.com", "correct horse battery staple")
        await auth.update_account(account.user_id, plan=Plan.FREE)
        pair = await auth.login("mallory@example.com", "correct horse battery staple")
        server = grpc.aio.server(interceptors=[AuthServerInterceptor(auth)])
        add_tool_service(server, engine)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()

        async def token() -> str:
            return pair.access_token

        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=auth_client_interceptors(token)
        )
        try:
            remote = ToolDispatcherFactory(GrpcToolEngineClient(channel, rpc_timeout_seconds=10))
            victim = make_caller()  # the token is mallory's; the context names someone else
            sink = BufferingEventSink(victim.context)
            async with remote.create_for_context(victim, sink) as dispatcher:
                with pytest.raises(CallerMismatchError):
                    await dispatcher.execute_tool("notes.search", {"query": "secret"})
            assert_one_pair_per_call(sink, ["notes.search"])
            assert sink.events[1].payload["success"] is False
        finally:
            await channel.close()
            await server.stop(None)


def _payload_keys(event: RunEventEnvelope) -> set[str]:
    payload: dict[str, Any] = event.payload
    return set(payload)


async def test_payloads_have_exactly_the_protocol_fields(
    dispatchers: ToolDispatcherFactory,
) -> None:
    caller = make_caller()
    sink = BufferingEventSink(caller.context)
    async with dispatchers.create_for_context(caller, sink) as dispatcher:
        await dispatcher.execute_tool("calculator", {"expression": "6 * 7"})
    executing, completed = sink.events
    assert _payload_keys(executing) == {"tool_name", "tool_input", "message"}
    assert _payload_keys(completed) == {
        "tool_name",
        "success",
        "result_summary",
        "execution_time_ms",
        "message",
    }
