"""The engine pipeline: every result status, the order of the steps, usage records."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

import pytest
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from auth.api import Plan
from data.api import ToolUsage
from data.factory import SqlDataAccessFactory
from dispatch.engine.api import (
    EngineClosedError,
    PermissionGroup,
    ResultCode,
    ToolCaller,
    ToolFailure,
    ToolStatus,
)
from dispatch.engine.builtin_tools import register_builtin_tools
from dispatch.engine.engine import LocalToolExecutionEngine
from dispatch.engine.permissions import ADMIN_ROLE
from dispatch.engine.rate_limits import RateLimitPolicy, ToolRateLimiter
from dispatch.engine.registry import ToolInput, ToolInvocation, ToolRegistry, define_tool
from dispatch.engine.testing import make_caller

SECRET = "s3cr3t-db-password"


class EchoInput(ToolInput):
    text: str = Field(min_length=1, max_length=20)
    times: int = Field(default=1, ge=1, le=3)


class Calls:
    """Counts handler runs, so tests can prove a handler did (not) run."""

    def __init__(self) -> None:
        self.count = 0
        self.started = asyncio.Event()
        self.waiting = 0
        self.all_waiting = asyncio.Event()
        self.release = asyncio.Event()


class Output(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: int


def _test_registry(calls: Calls) -> ToolRegistry:
    registry = register_builtin_tools(ToolRegistry())

    async def echo(invocation: ToolInvocation, args: EchoInput) -> dict[str, JsonValue]:
        calls.count += 1
        return {"echo": args.text * args.times, "user": invocation.caller.user_id}

    async def fail(invocation: ToolInvocation, args: EchoInput) -> None:
        calls.count += 1
        raise RuntimeError(f"connection to postgres://app:{SECRET}@db failed")

    async def refuse(invocation: ToolInvocation, args: EchoInput) -> None:
        raise ToolFailure("NOT_TODAY", f"cannot do {args.text!r} today")

    async def hang(invocation: ToolInvocation, args: EchoInput) -> None:
        calls.count += 1
        calls.started.set()
        await asyncio.Event().wait()

    async def wait(invocation: ToolInvocation, args: EchoInput) -> str:
        calls.waiting += 1
        if calls.waiting == args.times * 5:
            calls.all_waiting.set()
        await calls.release.wait()
        return "released"

    async def write_then_fail(invocation: ToolInvocation, args: EchoInput) -> None:
        await invocation.data.notes.add(f"half-written {args.text}")
        raise RuntimeError("failed after writing")

    async def bad_output(invocation: ToolInvocation, args: EchoInput) -> dict[str, JsonValue]:
        return {"value": "not a number"}

    async def not_json(invocation: ToolInvocation, args: EchoInput) -> dict[str, JsonValue]:
        return {"value": float("nan")}

    for name, handler, group in [
        ("test.echo", echo, PermissionGroup.BASIC),
        ("test.fail", fail, PermissionGroup.BASIC),
        ("test.refuse", refuse, PermissionGroup.BASIC),
        ("test.write_then_fail", write_then_fail, PermissionGroup.BASIC),
        ("test.not_json", not_json, PermissionGroup.BASIC),
        ("test.wait", wait, PermissionGroup.BASIC),
        ("analytics.echo", echo, PermissionGroup.ANALYTICS),
    ]:
        registry.register(
            define_tool(
                name=name,
                title=name,
                description=f"Test tool {name}.",
                group=group,
                input_model=EchoInput,
                handler=handler,
            )
        )
    registry.register(
        define_tool(
            name="test.hang",
            title="Hang",
            description="Never finishes.",
            group="basic",
            input_model=EchoInput,
            handler=hang,
            timeout_seconds=0.05,
        )
    )
    registry.register(
        define_tool(
            name="test.bad_output",
            title="Bad output",
            description="Breaks its output schema.",
            group="basic",
            input_model=EchoInput,
            output_model=Output,
            handler=bad_output,
        )
    )
    return registry


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
async def limiter() -> AsyncIterator[ToolRateLimiter]:
    limiter = ToolRateLimiter(
        group_limits={PermissionGroup.BASIC: RateLimitPolicy(per_minute=3, per_day=1000)}
    )
    try:
        yield limiter
    finally:
        await limiter.aclose()


@pytest.fixture
async def engine(
    calls: Calls, data_factory: SqlDataAccessFactory, limiter: ToolRateLimiter
) -> AsyncIterator[LocalToolExecutionEngine]:
    async with LocalToolExecutionEngine(
        registry=_test_registry(calls), data=data_factory, rate_limiter=limiter
    ) as engine:
        yield engine


async def _usage(factory: SqlDataAccessFactory, caller: ToolCaller) -> Sequence[ToolUsage]:
    async with factory.create_user_context(caller.context) as scope:
        return await scope.tool_usage.list()


# -- one test per status -------------------------------------------------------------------


async def test_success(engine: LocalToolExecutionEngine, calls: Calls) -> None:
    caller = make_caller()
    result = await engine.execute_tool(
        caller, "test.echo", {"text": "hi", "times": 2}, tool_call_id="call_1"
    )
    assert result.status is ToolStatus.SUCCESS
    assert result.success
    assert result.result == {"echo": "hihi", "user": caller.user_id}
    assert (result.tool_name, result.tool_call_id) == ("test.echo", "call_1")
    assert result.error_code is None and result.error_message is None
    assert result.execution_time_ms >= 0
    assert calls.count == 1


async def test_error_hides_the_exception_message(
    engine: LocalToolExecutionEngine, calls: Calls
) -> None:
    result = await engine.execute_tool(make_caller(), "test.fail", {"text": "x"})
    assert result.status is ToolStatus.ERROR
    assert result.error_code == ResultCode.TOOL_ERROR
    assert result.error_message == "tool 'test.fail' failed with an internal error"
    assert SECRET not in result.model_dump_json()
    assert calls.count == 1


async def test_error_from_tool_failure_keeps_its_code_and_message(
    engine: LocalToolExecutionEngine,
) -> None:
    result = await engine.execute_tool(make_caller(), "test.refuse", {"text": "that"})
    assert result.status is ToolStatus.ERROR
    assert (result.error_code, result.error_message) == ("NOT_TODAY", "cannot do 'that' today")


async def test_permission_denied(engine: LocalToolExecutionEngine, calls: Calls) -> None:
    result = await engine.execute_tool(make_caller(Plan.FREE), "analytics.echo", {"text": "x"})
    assert result.status is ToolStatus.PERMISSION_DENIED
    assert result.error_code == ResultCode.PERMISSION_DENIED
    assert result.upgrade_plans == (Plan.PRO, Plan.ENTERPRISE)
    assert "upgrade to pro or enterprise" in (result.error_message or "")
    assert calls.count == 0
    allowed = await engine.execute_tool(make_caller(Plan.PRO), "analytics.echo", {"text": "x"})
    assert allowed.status is ToolStatus.SUCCESS


async def test_rate_limited(engine: LocalToolExecutionEngine, calls: Calls) -> None:
    alice, bob = make_caller(), make_caller()
    for _ in range(3):
        assert (await engine.execute_tool(alice, "test.echo", {"text": "a"})).success
    limited = await engine.execute_tool(alice, "test.echo", {"text": "a"})
    assert limited.status is ToolStatus.RATE_LIMITED
    assert limited.error_code == ResultCode.RATE_LIMITED
    assert "3 per 1 minute" in (limited.error_message or "")
    assert limited.retry_after_seconds is not None and limited.retry_after_seconds > 0
    assert calls.count == 3  # the limited call never reached the handler
    # Another user, and the same user's other tools, are unaffected.
    assert (await engine.execute_tool(bob, "test.echo", {"text": "b"})).success
    assert (await engine.execute_tool(alice, "calculator", {"expression": "1+1"})).success


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({}, "'text' is a required property"),
        ({"text": ""}, "text: '' should be non-empty"),
        ({"text": "x" * 21}, "is too long"),
        ({"text": "x", "times": 9}, "times: 9 is greater than the maximum of 3"),
        ({"text": "x", "times": "2"}, "times: '2' is not of type 'integer'"),
        ({"text": "x", "extra": 1}, "Additional properties are not allowed"),
        ({"text": float("nan")}, "JSON values only"),
        ({"text": object()}, "JSON values only"),
        ({"text": "x" * 70_000}, "larger than 65536 bytes"),
    ],
    ids=["missing", "empty", "long", "maximum", "type", "extra", "nan", "object", "huge"],
)
async def test_invalid_input_is_refused_before_the_handler(
    engine: LocalToolExecutionEngine,
    calls: Calls,
    arguments: dict[str, object],
    fragment: str,
) -> None:
    result = await engine.execute_tool(make_caller(), "test.echo", arguments)
    assert result.status is ToolStatus.INVALID_INPUT
    assert result.error_code == ResultCode.INVALID_INPUT
    assert fragment in (result.error_message or "")
    assert len(result.error_message or "") <= 500
    assert calls.count == 0


@pytest.mark.parametrize("arguments", [["text"], "text", 42])
async def test_arguments_that_are_not_an_object_are_invalid_input(
    engine: LocalToolExecutionEngine, arguments: object
) -> None:
    result = await engine.execute_tool(make_caller(), "test.echo", arguments)
    assert result.status is ToolStatus.INVALID_INPUT
    assert result.error_message == "arguments must be a JSON object"


async def test_timeout(engine: LocalToolExecutionEngine, calls: Calls) -> None:
    result = await engine.execute_tool(make_caller(), "test.hang", {"text": "x"})
    assert result.status is ToolStatus.TIMEOUT
    assert result.error_code == ResultCode.TIMEOUT
    assert result.error_message == "tool 'test.hang' did not finish within 0.05 seconds"
    assert calls.started.is_set()


async def test_a_caller_may_shorten_but_not_lengthen_the_timeout(
    engine: LocalToolExecutionEngine,
) -> None:
    result = await engine.execute_tool(
        make_caller(), "test.hang", {"text": "x"}, timeout_seconds=3600
    )
    assert result.status is ToolStatus.TIMEOUT
    assert "0.05 seconds" in (result.error_message or "")
    shortened = await engine.execute_tool(
        make_caller(), "test.hang", {"text": "x"}, timeout_seconds=0.01
    )
    assert "0.01 seconds" in (shortened.error_message or "")


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan"), float("inf")])
async def test_a_non_positive_timeout_is_invalid_input(
    engine: LocalToolExecutionEngine, seconds: float
) -> None:
    result = await engine.execute_tool(
        make_caller(), "test.echo", {"text": "x"}, timeout_seconds=seconds
    )
    assert result.status is ToolStatus.INVALID_INPUT


@pytest.mark.parametrize(
    "name", ["no.such.tool", "", "calculator ", "../calculator", "x" * 10_000, "CALCULATOR"]
)
async def test_not_found(engine: LocalToolExecutionEngine, name: str) -> None:
    result = await engine.execute_tool(make_caller(Plan.DEVELOPER), name, {})
    assert result.status is ToolStatus.NOT_FOUND
    assert result.error_code == ResultCode.TOOL_NOT_FOUND
    assert len(result.tool_name) <= 128
    assert len(result.error_message or "") <= 100


# -- order of the steps ----------------------------------------------------------------------


async def test_permission_is_checked_before_input(engine: LocalToolExecutionEngine) -> None:
    result = await engine.execute_tool(make_caller(Plan.FREE), "analytics.echo", {"bad": 1})
    assert result.status is ToolStatus.PERMISSION_DENIED


async def test_invalid_input_does_not_count_against_the_rate_limit(
    engine: LocalToolExecutionEngine,
) -> None:
    caller = make_caller()
    for _ in range(5):
        result = await engine.execute_tool(caller, "test.echo", {})
        assert result.status is ToolStatus.INVALID_INPUT
    for _ in range(3):
        assert (await engine.execute_tool(caller, "test.echo", {"text": "x"})).success


async def test_permission_is_checked_before_the_tool_call_id(
    engine: LocalToolExecutionEngine,
) -> None:
    result = await engine.execute_tool(
        make_caller(Plan.FREE), "analytics.echo", {"text": "x"}, tool_call_id="bad id"
    )
    assert result.status is ToolStatus.PERMISSION_DENIED


async def test_invalid_tool_call_id_is_invalid_input(engine: LocalToolExecutionEngine) -> None:
    result = await engine.execute_tool(
        make_caller(), "test.echo", {"text": "x"}, tool_call_id="bad id\n"
    )
    assert result.status is ToolStatus.INVALID_INPUT
    assert result.error_code == ResultCode.INVALID_TOOL_CALL_ID
    assert result.tool_call_id.startswith("tool_")


# -- output, data and usage -------------------------------------------------------------------


async def test_output_violating_the_output_schema_is_an_error(
    engine: LocalToolExecutionEngine,
) -> None:
    result = await engine.execute_tool(make_caller(), "test.bad_output", {"text": "x"})
    assert result.status is ToolStatus.ERROR
    assert result.error_code == ResultCode.INVALID_TOOL_OUTPUT
    assert result.result is None


async def test_output_that_is_not_json_is_an_error(engine: LocalToolExecutionEngine) -> None:
    result = await engine.execute_tool(make_caller(), "test.not_json", {"text": "x"})
    assert result.status is ToolStatus.ERROR
    assert result.error_code == ResultCode.INVALID_TOOL_OUTPUT


async def test_usage_is_recorded_for_every_executed_call(
    engine: LocalToolExecutionEngine, data_factory: SqlDataAccessFactory
) -> None:
    caller = make_caller()
    await engine.execute_tool(caller, "test.echo", {"text": "x"})
    await engine.execute_tool(caller, "test.fail", {"text": "x"})
    await engine.execute_tool(caller, "test.hang", {"text": "x"})
    usage = sorted(await _usage(data_factory, caller), key=lambda u: u.tool_name)
    assert [(u.tool_name, u.success, u.error_code) for u in usage] == [
        ("test.echo", True, None),
        ("test.fail", False, "TOOL_ERROR"),
        ("test.hang", False, "TIMEOUT"),
    ]
    assert all(u.run_id == caller.context.run_id and u.duration_ms >= 0 for u in usage)
    # Nothing was recorded for anybody else.
    assert await _usage(data_factory, make_caller()) == []


async def test_refused_calls_record_no_usage(
    engine: LocalToolExecutionEngine, data_factory: SqlDataAccessFactory
) -> None:
    caller = make_caller()
    await engine.execute_tool(caller, "no.such.tool", {})
    await engine.execute_tool(caller, "analytics.echo", {"text": "x"})
    await engine.execute_tool(caller, "test.echo", {})
    assert await _usage(data_factory, caller) == []


async def test_a_failed_call_leaves_no_half_written_data(
    engine: LocalToolExecutionEngine, data_factory: SqlDataAccessFactory
) -> None:
    caller = make_caller()
    result = await engine.execute_tool(caller, "test.write_then_fail", {"text": "x"})
    assert result.status is ToolStatus.ERROR
    async with data_factory.create_user_context(caller.context) as scope:
        assert await scope.notes.list() == []
        usage = await scope.tool_usage.list()
    assert [(u.tool_name, u.success) for u in usage] == [("test.write_then_fail", False)]


async def test_too_many_concurrent_calls_of_one_user_get_a_data_error(
    data_factory: SqlDataAccessFactory, calls: Calls
) -> None:
    # The data factory allows 10 live scopes per user; each running call holds one.
    unlimited = ToolRateLimiter(group_limits={PermissionGroup.BASIC: RateLimitPolicy()})
    async with LocalToolExecutionEngine(
        registry=_test_registry(calls), data=data_factory, rate_limiter=unlimited
    ) as engine:
        alice, bob = make_caller(), make_caller()
        running = [
            asyncio.create_task(engine.execute_tool(alice, "test.wait", {"text": "x", "times": 2}))
            for _ in range(10)
        ]
        await calls.all_waiting.wait()
        refused = await engine.execute_tool(alice, "test.echo", {"text": "x"})
        other_user = await engine.execute_tool(bob, "test.echo", {"text": "x"})
        calls.release.set()
        finished = await asyncio.gather(*running)
    await unlimited.aclose()
    assert refused.status is ToolStatus.ERROR
    assert refused.error_code == "SCOPE_LIMIT_EXCEEDED"
    assert other_user.status is ToolStatus.SUCCESS
    assert [(r.status, r.result, r.error_message) for r in finished] == [
        (ToolStatus.SUCCESS, "released", None)
    ] * 10


async def test_concurrent_calls_of_many_users_each_see_their_own_caller(
    engine: LocalToolExecutionEngine,
) -> None:
    callers = [make_caller() for _ in range(10)]
    results = await asyncio.gather(
        *(engine.execute_tool(c, "test.echo", {"text": "x"}) for c in callers)
    )
    for caller, result in zip(callers, results, strict=True):
        assert result.result == {"echo": "x", "user": caller.user_id}


# -- listing, stats, lifecycle --------------------------------------------------------------


async def test_list_tools_shows_what_the_plan_allows(engine: LocalToolExecutionEngine) -> None:
    free = {d.name for d in await engine.list_tools(make_caller(Plan.FREE))}
    assert "calculator" in free
    assert "analytics.echo" not in free
    assert "system.stats" not in free
    admin = make_caller(Plan.ENTERPRISE, roles=(ADMIN_ROLE,))
    assert {"analytics.echo", "system.stats"} <= {d.name for d in await engine.list_tools(admin)}
    everything = await engine.list_tools(make_caller(Plan.FREE), include_unavailable=True)
    assert len(everything) == len(engine.registry)
    assert [d.name for d in everything] == sorted(d.name for d in everything)


async def test_system_stats_is_for_enterprise_admins_and_holds_only_totals(
    engine: LocalToolExecutionEngine,
) -> None:
    alice = make_caller()
    await engine.execute_tool(alice, "test.echo", {"text": "x"})
    await engine.execute_tool(alice, "no.such.tool", {})
    denied = await engine.execute_tool(make_caller(Plan.ENTERPRISE), "system.stats", {})
    assert denied.status is ToolStatus.PERMISSION_DENIED

    admin = make_caller(Plan.ENTERPRISE, roles=(ADMIN_ROLE,))
    result = await engine.execute_tool(admin, "system.stats", {})
    assert result.status is ToolStatus.SUCCESS
    assert isinstance(result.result, dict)
    assert result.result["tools_registered"] == len(engine.registry)
    assert result.result["calls_total"] == 3
    assert result.result["calls_by_status"] == {
        "success": 1,
        "not_found": 1,
        "permission_denied": 1,
    }
    assert result.result["calls_by_tool"] == {"test.echo": 1, "system.stats": 1}
    text = json.dumps(result.result)
    assert alice.user_id not in text
    assert alice.context.run_id not in text


async def test_a_closed_engine_refuses_calls(engine: LocalToolExecutionEngine) -> None:
    await engine.aclose()
    with pytest.raises(EngineClosedError):
        await engine.execute_tool(make_caller(), "calculator", {"expression": "1"})
    with pytest.raises(EngineClosedError):
        await engine.list_tools(make_caller())


async def test_unreachable_rate_limit_storage_refuses_the_call(
    data_factory: SqlDataAccessFactory, calls: Calls
) -> None:
    limiter = ToolRateLimiter("redis://127.0.0.1:1/0")
    try:
        async with LocalToolExecutionEngine(
            registry=_test_registry(calls), data=data_factory, rate_limiter=limiter
        ) as engine:
            result = await engine.execute_tool(make_caller(), "test.echo", {"text": "x"})
    finally:
        await limiter.aclose()
    assert result.status is ToolStatus.ERROR
    assert result.error_code == ResultCode.RATE_LIMIT_UNAVAILABLE
    assert calls.count == 0
