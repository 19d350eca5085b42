"""``LocalToolExecutionEngine``: the in-process implementation of ``ToolExecutionEngine``.

One call runs these steps in this order; the first that fails decides the result:

1. the tool exists (``not_found``);
2. the caller's plan and roles grant the tool's group (``permission_denied``);
3. the arguments are a JSON object that validates against the tool's JSON Schema
   (Draft 2020-12) and parses into its pydantic model (``invalid_input``; the handler is
   not run);
4. the caller is within the tool's per-user rate limits (``rate_limited``);
5. the handler runs in a data scope opened for the caller's own context, under a timeout
   (``timeout``); exceptions become ``error`` results with a sanitised message;
6. the call's usage (success, duration, error code) is recorded through that scope.

A failed, timed-out or invalid-output call rolls its data scope back before the usage is
recorded, so a failed tool leaves no half-written data behind. Arguments and results are
never logged.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType

import structlog
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaValidationError
from jsonschema.exceptions import best_match
from pydantic import BaseModel, JsonValue
from pydantic import ValidationError as ModelValidationError
from structlog.typing import FilteringBoundLogger

from auth.api import Plan
from context.api import IDKind, context_scope, new_id
from context.errors import describe_value
from data.api import DataAccessFactory, DataError, UserDataScope
from dispatch.engine.api import (
    EngineClosedError,
    EngineStats,
    ResultCode,
    ToolCaller,
    ToolDefinition,
    ToolExecutionResult,
    ToolFailure,
    ToolStatus,
)
from dispatch.engine.permissions import check_tool_permission
from dispatch.engine.rate_limits import RateLimitStorageError, ToolRateLimiter
from dispatch.engine.registry import RegisteredTool, ToolInvocation, ToolRegistry

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "LocalToolExecutionEngine"]

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_ARGUMENT_BYTES = 64 * 1024
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024

_MAX_MESSAGE_CHARS = 500
_MAX_REPORTED_NAME_CHARS = 128
_TOOL_CALL_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
_ERROR_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
# Data errors whose message speaks about the caller's own request (see data.api.DataError).
_CALLER_FACING_DATA_STATUSES = frozenset(
    {"INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"}
)


def _shorten(text: str, limit: int = _MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _data_error_message(exc: DataError) -> str:
    if exc.grpc_status_name in _CALLER_FACING_DATA_STATUSES:
        return _shorten(exc.message)
    if exc.grpc_status_name == "UNAVAILABLE":
        return "data storage is unavailable; retry later"
    return "data access failed"


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What a step decided; turned into a ToolExecutionResult once timing is known."""

    status: ToolStatus
    result: JsonValue = None
    error_code: str | None = None
    error_message: str | None = None
    retry_after_seconds: float | None = None
    upgrade_plans: tuple[Plan, ...] = ()

    @classmethod
    def failure(cls, status: ToolStatus, code: str, message: str) -> _Outcome:
        return cls(status=status, error_code=code, error_message=_shorten(message))


class _NotJSONError(Exception):
    """A value is not plain JSON, or too large; ``reason`` completes "<what> ..."."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _plain_json(value: object, max_bytes: int) -> JsonValue:
    """``value`` as plain JSON data (dicts, lists, str, finite numbers, bools, None).

    Raises :class:`_NotJSONError` when it is not JSON or its encoding is larger than
    ``max_bytes``.
    """
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        raise _NotJSONError(
            "must contain JSON values only (objects, arrays, strings, numbers, booleans, null)"
        ) from None
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise _NotJSONError(f"is larger than {max_bytes} bytes of JSON")
    try:
        parsed: JsonValue = json.loads(text)
    except (ValueError, RecursionError):
        raise _NotJSONError("must contain JSON values only") from None
    return parsed


def _schema_error_message(error: SchemaValidationError) -> str:
    location = "/".join(str(part) for part in error.absolute_path)
    return _shorten(f"{location or '(arguments)'}: {error.message}")


def _model_error_message(exc: ModelValidationError) -> str:
    problems = []
    for item in exc.errors(include_url=False, include_input=False)[:5]:
        location = "/".join(str(part) for part in item["loc"]) or "(arguments)"
        problems.append(f"{location}: {item['msg']}")
    return _shorten("; ".join(problems))


@dataclass(frozen=True, slots=True, kw_only=True)
class _Call:
    """One admitted call of a registered tool, as the pipeline steps see it."""

    registered: RegisteredTool
    caller: ToolCaller
    call_id: str
    #: Whether the caller's tool_call_id was acceptable (else ``call_id`` is a new one).
    call_id_valid: bool
    started: float
    log: FilteringBoundLogger


class _Counters:
    """Engine-wide call totals (no per-user data)."""

    def __init__(self) -> None:
        self.started_at = datetime.now(UTC)
        self.started_monotonic = time.monotonic()
        self.by_status: Counter[str] = Counter()
        self.by_tool: Counter[str] = Counter()

    def count(self, status: ToolStatus, tool_name: str | None) -> None:
        self.by_status[status.value] += 1
        if tool_name is not None:
            self.by_tool[tool_name] += 1


class LocalToolExecutionEngine:
    """Executes registered tools for verified callers; see the module docstring.

    ``data`` opens the per-call data scopes; ``rate_limiter`` defaults to an in-memory one
    (closed by :meth:`aclose`; a limiter passed in belongs to the caller).
    """

    def __init__(
        self,
        *,
        registry: ToolRegistry,
        data: DataAccessFactory,
        rate_limiter: ToolRateLimiter | None = None,
        default_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_argument_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        if not (math.isfinite(default_timeout_seconds) and default_timeout_seconds > 0):
            raise ValueError("default_timeout_seconds must be a positive number")
        self._registry = registry
        self._data = data
        self._owns_limiter = rate_limiter is None
        self._limiter = rate_limiter if rate_limiter is not None else ToolRateLimiter()
        self._default_timeout = default_timeout_seconds
        self._max_argument_bytes = max_argument_bytes
        self._max_result_bytes = max_result_bytes
        self._counters = _Counters()
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def registry(self) -> ToolRegistry:
        return self._registry

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        """Refuse further calls; release the rate limiter if the engine created it."""
        if self._closed:
            return
        self._closed = True
        if self._owns_limiter:
            await self._limiter.aclose()

    async def __aenter__(self) -> LocalToolExecutionEngine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def stats(self) -> EngineStats:
        """Engine-wide totals; safe to show to administrators (no user data)."""
        counters = self._counters
        try:
            live_scopes: int | None = self._data.stats().live_scopes
        except DataError:
            live_scopes = None
        return EngineStats(
            started_at=counters.started_at,
            uptime_seconds=max(0.0, time.monotonic() - counters.started_monotonic),
            tools_registered=len(self._registry),
            calls_total=sum(counters.by_status.values()),
            calls_by_status=dict(counters.by_status),
            calls_by_tool=dict(counters.by_tool),
            live_data_scopes=live_scopes,
        )

    # -- ToolExecutionEngine -------------------------------------------------------------

    async def list_tools(
        self, caller: ToolCaller, *, include_unavailable: bool = False
    ) -> Sequence[ToolDefinition]:
        if self._closed:
            raise EngineClosedError("the tool engine is closed")
        definitions = self._registry.definitions()
        if include_unavailable:
            return definitions
        return [d for d in definitions if check_tool_permission(caller, d).allowed]

    async def execute_tool(
        self,
        caller: ToolCaller,
        tool_name: str,
        arguments: object = None,
        *,
        tool_call_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> ToolExecutionResult:
        """Run one call through the pipeline (module docstring). ``arguments`` is taken as
        any object: what is not a JSON object is an INVALID_INPUT result, never an error."""
        if self._closed:
            raise EngineClosedError("the tool engine is closed")
        started = time.perf_counter()
        ctx = caller.context
        raw_call_id: object = tool_call_id
        call_id_ok = raw_call_id is None or (
            isinstance(raw_call_id, str) and _TOOL_CALL_ID.fullmatch(raw_call_id) is not None
        )
        call_id = tool_call_id if call_id_ok and tool_call_id is not None else new_id(IDKind.TOOL)
        raw_name: object = tool_name
        registered = self._registry.get(tool_name) if isinstance(raw_name, str) else None
        reported_name = (
            tool_name
            if registered is not None
            else _shorten(str(raw_name), _MAX_REPORTED_NAME_CHARS)
        )
        bound = log.bind(
            user_id=ctx.user_id,
            run_id=ctx.run_id,
            request_id=ctx.request_id,
            tool_name=reported_name,
            tool_call_id=call_id,
        )
        with context_scope(ctx):
            if registered is None:
                outcome = _Outcome.failure(
                    ToolStatus.NOT_FOUND,
                    ResultCode.TOOL_NOT_FOUND,
                    f"no tool named {describe_value(raw_name)}",
                )
            else:
                call = _Call(
                    registered=registered,
                    caller=caller,
                    call_id=call_id,
                    call_id_valid=call_id_ok,
                    started=started,
                    log=bound,
                )
                outcome = await self._execute_registered(call, arguments, timeout_seconds)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        self._counters.count(outcome.status, None if registered is None else tool_name)
        bound.info(
            "tool_call_finished",
            status=outcome.status.value,
            error_code=outcome.error_code,
            execution_time_ms=round(elapsed_ms, 3),
        )
        return ToolExecutionResult(
            status=outcome.status,
            tool_name=reported_name,
            tool_call_id=call_id,
            result=outcome.result,
            error_code=outcome.error_code,
            error_message=outcome.error_message,
            execution_time_ms=elapsed_ms,
            retry_after_seconds=outcome.retry_after_seconds,
            upgrade_plans=outcome.upgrade_plans,
        )

    # -- the pipeline ----------------------------------------------------------------------

    async def _execute_registered(
        self,
        call: _Call,
        arguments: object,
        timeout_seconds: float | None,
    ) -> _Outcome:
        admitted = await self._admit(call, arguments, timeout_seconds)
        if isinstance(admitted, _Outcome):
            return admitted
        args, time_limit = admitted
        try:
            async with self._data.create_user_context(call.caller.context) as scope:
                outcome = await self._run_handler(call, scope, args, time_limit)
                if outcome.status is not ToolStatus.SUCCESS:
                    await self._rollback(call, scope)
                await self._record_usage(call, scope, outcome)
        except DataError as exc:
            # Opening the scope failed, or committing it did: nothing the tool did is kept.
            call.log.warning("tool_data_scope_failed", error_code=exc.error_code)
            return _Outcome.failure(ToolStatus.ERROR, exc.error_code, _data_error_message(exc))
        return outcome

    async def _admit(
        self,
        call: _Call,
        arguments: object,
        timeout_seconds: float | None,
    ) -> tuple[BaseModel, float] | _Outcome:
        """Permission, input, time limit and rate limit: the parsed input and the time
        limit if the call may run, else the refusal."""
        decision = check_tool_permission(call.caller, call.registered.definition)
        if not decision.allowed:
            call.log.info("tool_call_denied", reason=decision.reason)
            return _Outcome(
                status=ToolStatus.PERMISSION_DENIED,
                error_code=ResultCode.PERMISSION_DENIED,
                error_message=_shorten(decision.reason),
                upgrade_plans=decision.upgrade_plans,
            )
        if not call.call_id_valid:
            return _Outcome.failure(
                ToolStatus.INVALID_INPUT,
                ResultCode.INVALID_TOOL_CALL_ID,
                "tool_call_id must be 1-128 characters from [A-Za-z0-9_.:-]",
            )
        parsed = self._parse_arguments(call.registered, arguments)
        if isinstance(parsed, _Outcome):
            return parsed
        time_limit = self._time_limit(call.registered, timeout_seconds)
        if time_limit is None:
            return _Outcome.failure(
                ToolStatus.INVALID_INPUT,
                ResultCode.INVALID_INPUT,
                "timeout_seconds must be a positive, finite number",
            )
        refusal = await self._check_rate_limit(call)
        if refusal is not None:
            return refusal
        return parsed, time_limit

    async def _check_rate_limit(self, call: _Call) -> _Outcome | None:
        tool = call.registered.tool
        policy = self._limiter.policy_for(call.registered.group, tool.rate_limit)
        try:
            limit = await self._limiter.hit(call.caller.user_id, tool.name, policy)
        except RateLimitStorageError:
            return _Outcome.failure(
                ToolStatus.ERROR,
                ResultCode.RATE_LIMIT_UNAVAILABLE,
                "rate limits cannot be checked right now; the call was refused, retry later",
            )
        if limit.allowed:
            return None
        return _Outcome(
            status=ToolStatus.RATE_LIMITED,
            error_code=ResultCode.RATE_LIMITED,
            error_message=f"rate limit exceeded for tool {tool.name!r}: {limit.limit}",
            retry_after_seconds=limit.retry_after_seconds,
        )

    def _parse_arguments(
        self, registered: RegisteredTool, arguments: object
    ) -> BaseModel | _Outcome:
        raw = {} if arguments is None else arguments
        if not isinstance(raw, Mapping):
            return _Outcome.failure(
                ToolStatus.INVALID_INPUT,
                ResultCode.INVALID_INPUT,
                "arguments must be a JSON object",
            )
        try:
            instance = _plain_json(dict(raw), self._max_argument_bytes)
        except _NotJSONError as exc:
            return _Outcome.failure(
                ToolStatus.INVALID_INPUT, ResultCode.INVALID_INPUT, f"arguments {exc.reason}"
            )
        validator: Draft202012Validator = registered.input_validator
        error = best_match(validator.iter_errors(instance))
        if error is not None:
            return _Outcome.failure(
                ToolStatus.INVALID_INPUT, ResultCode.INVALID_INPUT, _schema_error_message(error)
            )
        model: type[BaseModel] = registered.tool.input_model
        try:
            return model.model_validate(instance)
        except ModelValidationError as exc:
            return _Outcome.failure(
                ToolStatus.INVALID_INPUT, ResultCode.INVALID_INPUT, _model_error_message(exc)
            )

    def _time_limit(self, registered: RegisteredTool, requested: float | None) -> float | None:
        limit = registered.tool.timeout_seconds or self._default_timeout
        if requested is None:
            return limit
        raw: object = requested
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return None
        if not (math.isfinite(requested) and requested > 0):
            return None
        return min(limit, float(requested))

    async def _run_handler(
        self, call: _Call, scope: UserDataScope, args: BaseModel, time_limit: float
    ) -> _Outcome:
        tool = call.registered.tool
        invocation = ToolInvocation(
            caller=call.caller,
            data=scope,
            tool_name=tool.name,
            tool_call_id=call.call_id,
            engine_stats=self.stats,
        )
        deadline = asyncio.timeout(time_limit)
        try:
            async with deadline:
                value = await tool.handler(invocation, args)
        except TimeoutError:
            if deadline.expired():
                return _Outcome.failure(
                    ToolStatus.TIMEOUT,
                    ResultCode.TIMEOUT,
                    f"tool {tool.name!r} did not finish within {time_limit:g} seconds",
                )
            call.log.warning("tool_handler_failed", exc_type="TimeoutError")
            return _Outcome.failure(
                ToolStatus.ERROR, ResultCode.TOOL_ERROR, f"tool {tool.name!r} failed"
            )
        except ToolFailure as failure:
            raw_code: object = failure.error_code
            code = (
                failure.error_code
                if isinstance(raw_code, str) and _ERROR_CODE.fullmatch(failure.error_code)
                else ResultCode.TOOL_ERROR
            )
            return _Outcome.failure(failure.status, code, str(failure.message))
        except DataError as exc:
            call.log.warning("tool_data_error", error_code=exc.error_code)
            return _Outcome.failure(ToolStatus.ERROR, exc.error_code, _data_error_message(exc))
        except Exception as exc:
            # The message of an unexpected exception may carry anything; it stays in the log.
            call.log.error("tool_handler_failed", exc_type=type(exc).__name__, exc_info=True)
            return _Outcome.failure(
                ToolStatus.ERROR,
                ResultCode.TOOL_ERROR,
                f"tool {tool.name!r} failed with an internal error",
            )
        return self._check_output(call, value)

    def _check_output(self, call: _Call, value: object) -> _Outcome:
        name = call.registered.tool.name
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        try:
            result = _plain_json(value, self._max_result_bytes)
        except _NotJSONError as exc:
            return _Outcome.failure(
                ToolStatus.ERROR,
                ResultCode.INVALID_TOOL_OUTPUT,
                f"the output of {name!r} {exc.reason}",
            )
        validator = call.registered.output_validator
        if validator is not None:
            error = best_match(validator.iter_errors(result))
            if error is not None:
                call.log.error("tool_output_invalid", problem=_schema_error_message(error))
                return _Outcome.failure(
                    ToolStatus.ERROR,
                    ResultCode.INVALID_TOOL_OUTPUT,
                    f"tool {name!r} returned output that does not match its output schema",
                )
        return _Outcome(status=ToolStatus.SUCCESS, result=result)

    @staticmethod
    async def _rollback(call: _Call, scope: UserDataScope) -> None:
        try:
            await scope.rollback()
        except DataError as exc:
            call.log.warning("tool_rollback_failed", error_code=exc.error_code)

    @staticmethod
    async def _record_usage(call: _Call, scope: UserDataScope, outcome: _Outcome) -> None:
        try:
            await scope.tool_usage.record(
                tool_name=call.registered.tool.name,
                success=outcome.status is ToolStatus.SUCCESS,
                duration_ms=(time.perf_counter() - call.started) * 1000.0,
                run_id=call.caller.context.run_id,
                error_code=outcome.error_code,
            )
        except DataError as exc:
            call.log.warning("tool_usage_not_recorded", error_code=exc.error_code)
