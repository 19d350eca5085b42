"""``UnifiedToolDispatcher`` and its factory: the request-scoped front door for tool calls.

:class:`ToolDispatcherFactory` is configured once with a
:class:`~dispatch.engine.api.ToolExecutionEngine` (in-process or over gRPC) and hands out
one :class:`UnifiedToolDispatcher` per request: bound to one verified caller and one event
sink. It is the only way to get a dispatcher (direct construction raises
:class:`~dispatch.tools.api.DispatcherConstructionError`), and it allows each user at most
``max_dispatchers_per_user`` live dispatchers (10 by default): past that the user gets
:class:`~dispatch.tools.api.DispatcherLimitExceededError` while other users are unaffected.
``cleanup()`` frees the slot; a dispatcher dropped without cleanup frees it when it is
garbage-collected (and is counted as leaked).

One :meth:`UnifiedToolDispatcher.execute_tool` call:

1. emits ``tool_executing`` {tool_name, tool_input (sanitised), message};
2. runs the call through the engine, which never raises for a failing tool: unknown,
   denied, invalid, rate-limited, timed-out and failing calls are results;
3. emits ``tool_completed`` {tool_name, success, result_summary, execution_time_ms, message}
   and returns the engine's result.

Exactly one of each event per call, in that order, whatever happens: when the engine is
unreachable the call becomes an ``error`` result; when the caller itself is refused by the
engine, or the call is cancelled, ``tool_completed`` (``success=False``) is still emitted
before the error propagates. Events are emitted by the dispatcher only, never also by the
engine, so nothing is sent twice. A sink that returns ``False`` or raises (no live
WebSocket, a closed emitter) does not stop the tool: it still runs and its result is still
returned; the dispatcher only counts the undelivered event.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import cast

import structlog

from dispatch.engine.api import (
    EngineError,
    EngineUnavailableError,
    ToolCaller,
    ToolDefinition,
    ToolExecutionEngine,
    ToolExecutionResult,
    ToolStatus,
)
from dispatch.tools.api import (
    DEFAULT_DISPATCHER_AGENT_NAME,
    MAX_DISPATCHERS_PER_USER,
    DispatcherClosedError,
    DispatcherConstructionError,
    DispatcherFactoryClosedError,
    DispatcherFactoryStats,
    DispatcherLimitExceededError,
    DispatcherMetrics,
    EventPayload,
    InvalidDispatcherRequestError,
    RunEventSink,
    ToolCompletedPayload,
    ToolExecutingPayload,
    is_valid_agent_name,
)
from dispatch.tools.emit import emit_to_completion
from dispatch.tools.sanitize import sanitize_tool_input, shorten, summarize_result

__all__ = ["ToolDispatcherFactory", "UnifiedToolDispatcher"]

log = structlog.get_logger(__name__)

_FACTORY_TOKEN = object()
_MAX_REPORTED_NAME = 128


class ToolDispatcherFactory:
    """Builds :class:`UnifiedToolDispatcher` instances; see the module docstring.

    Not a process-wide singleton: the composition root builds one and passes it on.
    """

    def __init__(
        self,
        engine: ToolExecutionEngine,
        *,
        max_dispatchers_per_user: int = MAX_DISPATCHERS_PER_USER,
        default_agent_name: str = DEFAULT_DISPATCHER_AGENT_NAME,
    ) -> None:
        if max_dispatchers_per_user < 1:
            raise ValueError("max_dispatchers_per_user must be at least 1")
        if not is_valid_agent_name(default_agent_name):
            raise ValueError("default_agent_name must be 1-128 printable characters")
        self._engine = engine
        self._max_per_user = max_dispatchers_per_user
        self._default_agent_name = default_agent_name
        # user_id -> ids of that user's live dispatchers
        self._live: dict[str, set[str]] = {}
        self._dispatchers: weakref.WeakValueDictionary[str, UnifiedToolDispatcher] = (
            weakref.WeakValueDictionary()
        )
        self._created = 0
        self._rejected = 0
        self._cleaned_up = 0
        self._leaked = 0
        self._closed = False

    @property
    def engine(self) -> ToolExecutionEngine:
        return self._engine

    @property
    def closed(self) -> bool:
        return self._closed

    def create_for_context(
        self, caller: ToolCaller, sink: RunEventSink, *, agent_name: str | None = None
    ) -> UnifiedToolDispatcher:
        """A dispatcher for ``caller`` (a verified caller and its request context) whose
        tool events go to ``sink`` under ``agent_name``.

        Raises :class:`InvalidDispatcherRequestError` for a bad argument,
        :class:`DispatcherLimitExceededError` when the user has too many live dispatchers
        and :class:`DispatcherFactoryClosedError` after :meth:`aclose`.
        """
        if self._closed:
            raise DispatcherFactoryClosedError("the tool dispatcher factory was closed")
        if not isinstance(cast(object, caller), ToolCaller):
            raise InvalidDispatcherRequestError(
                f"a dispatcher needs a ToolCaller, got {type(caller).__name__}"
            )
        if not callable(getattr(sink, "emit", None)):
            raise InvalidDispatcherRequestError("the event sink has no emit method")
        name = self._default_agent_name if agent_name is None else agent_name
        if not is_valid_agent_name(name):
            raise InvalidDispatcherRequestError("agent_name must be 1-128 printable characters")
        user_id = caller.user_id
        live = self._live.setdefault(user_id, set())
        if len(live) >= self._max_per_user:
            self._rejected += 1
            log.info("tool_dispatcher_refused", user_id=user_id, live=len(live))
            raise DispatcherLimitExceededError(
                f"you already have {len(live)} live tool dispatchers (the limit is "
                f"{self._max_per_user}); finish a request first"
            )
        dispatcher_id = f"dsp_{secrets.token_hex(10)}"
        dispatcher = UnifiedToolDispatcher(
            self, caller, sink, agent_name=name, dispatcher_id=dispatcher_id, _token=_FACTORY_TOKEN
        )
        live.add(dispatcher_id)
        self._dispatchers[dispatcher_id] = dispatcher
        self._created += 1
        return dispatcher

    def _release(self, user_id: str, dispatcher_id: str, *, leaked: bool) -> None:
        """Free a dispatcher's slot (from cleanup, or from its finaliser when leaked)."""
        live = self._live.get(user_id)
        if live is None or dispatcher_id not in live:
            return
        live.discard(dispatcher_id)
        if not live:
            del self._live[user_id]
        if leaked:
            self._leaked += 1
            log.warning("tool_dispatcher_leaked", user_id=user_id, dispatcher_id=dispatcher_id)
        else:
            self._cleaned_up += 1

    def live_count(self, user_id: str) -> int:
        """How many live dispatchers ``user_id`` has."""
        return len(self._live.get(user_id, ()))

    def stats(self) -> DispatcherFactoryStats:
        return DispatcherFactoryStats(
            live_dispatchers=sum(len(ids) for ids in self._live.values()),
            dispatchers_per_user={user: len(ids) for user, ids in self._live.items()},
            created=self._created,
            rejected=self._rejected,
            cleaned_up=self._cleaned_up,
            leaked=self._leaked,
            max_dispatchers_per_user=self._max_per_user,
            closed=self._closed,
        )

    async def aclose(self) -> None:
        """Refuse new dispatchers and clean up every live one."""
        self._closed = True
        for dispatcher in list(self._dispatchers.values()):
            await dispatcher.cleanup()


class UnifiedToolDispatcher:
    """Tool calls of one caller with exactly-once tool events; see the module docstring.

    Built only by :meth:`ToolDispatcherFactory.create_for_context`. Use it as an async
    context manager (``async with factory.create_for_context(...) as dispatcher``) or call
    :meth:`cleanup` when the request ends.
    """

    def __init__(
        self,
        factory: ToolDispatcherFactory,
        caller: ToolCaller,
        sink: RunEventSink,
        *,
        agent_name: str,
        dispatcher_id: str,
        _token: object = None,
    ) -> None:
        if _token is not _FACTORY_TOKEN:
            raise DispatcherConstructionError(
                "build a tool dispatcher with ToolDispatcherFactory.create_for_context"
            )
        self._factory = factory
        self._engine = factory.engine
        self._caller = caller
        self._sink = sink
        self._agent_name = agent_name
        self._dispatcher_id = dispatcher_id
        self._closed = False
        self._by_status: Counter[str] = Counter()
        self._total_ms = 0.0
        self._events_emitted = 0
        self._events_undelivered = 0
        ctx = caller.context
        self._log = log.bind(
            user_id=ctx.user_id,
            run_id=ctx.run_id,
            request_id=ctx.request_id,
            dispatcher_id=dispatcher_id,
        )
        self._finalizer = weakref.finalize(
            self, factory._release, caller.user_id, dispatcher_id, leaked=True
        )

    def __repr__(self) -> str:
        return (
            f"UnifiedToolDispatcher(id={self._dispatcher_id!r}, "
            f"run_id={self._caller.context.run_id!r}, closed={self._closed})"
        )

    # -- properties ------------------------------------------------------------------------

    @property
    def dispatcher_id(self) -> str:
        return self._dispatcher_id

    @property
    def caller(self) -> ToolCaller:
        return self._caller

    @property
    def agent_name(self) -> str:
        return self._agent_name

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise DispatcherClosedError("this tool dispatcher was cleaned up; create a new one")

    # -- tools -----------------------------------------------------------------------------

    async def list_tools(self) -> Sequence[ToolDefinition]:
        """The tools this caller may call, sorted by name."""
        self._check_open()
        return await self._engine.list_tools(self._caller)

    async def execute_tool(
        self,
        name: str,
        params: Mapping[str, object] | None = None,
        *,
        tool_call_id: str | None = None,
    ) -> ToolExecutionResult:
        """Run one tool call with exactly one ``tool_executing`` and one ``tool_completed``.

        Tool failures are results. Raises :class:`DispatcherClosedError` after cleanup
        (no events then); an :class:`~dispatch.engine.api.EngineError` that refuses the
        caller propagates after ``tool_completed``.
        """
        self._check_open()
        raw_name: object = name
        shown_name = shorten(
            raw_name if isinstance(raw_name, str) and raw_name.strip() else repr(raw_name),
            _MAX_REPORTED_NAME,
        )
        if not shown_name.isprintable():
            shown_name = repr(shown_name)[:_MAX_REPORTED_NAME]
        started = time.perf_counter()
        completion_sent = False
        try:
            await self._emit(
                ToolExecutingPayload(
                    tool_name=shown_name,
                    tool_input=sanitize_tool_input(params),
                    message=f"Running tool {shown_name}",
                )
            )
            result = await self._run(name, params, tool_call_id, started)
            completion_sent = True
            await self._emit(
                ToolCompletedPayload(
                    tool_name=shown_name,
                    success=result.success,
                    result_summary=summarize_result(result),
                    execution_time_ms=result.execution_time_ms,
                    message=f"Tool {shown_name} finished: {result.status.value}",
                )
            )
            return result
        except BaseException as exc:
            if not completion_sent:
                completion_sent = True
                elapsed = (time.perf_counter() - started) * 1000.0
                self._count(ToolStatus.ERROR.value, elapsed)
                reason = "cancelled" if isinstance(exc, asyncio.CancelledError) else "refused"
                await self._emit(
                    ToolCompletedPayload(
                        tool_name=shown_name,
                        success=False,
                        result_summary=f"error: the call was {reason}",
                        execution_time_ms=elapsed,
                        message=f"Tool {shown_name} was {reason}",
                    )
                )
            raise

    async def _run(
        self,
        name: str,
        params: Mapping[str, object] | None,
        tool_call_id: str | None,
        started: float,
    ) -> ToolExecutionResult:
        try:
            result = await self._engine.execute_tool(
                self._caller, name, params, tool_call_id=tool_call_id
            )
        except EngineUnavailableError as exc:
            # The engine cannot be reached: for the agent this is a failed call, not a crash.
            self._log.warning("tool_engine_unavailable", error_code=exc.error_code)
            elapsed = (time.perf_counter() - started) * 1000.0
            result = ToolExecutionResult(
                status=ToolStatus.ERROR,
                tool_name=shorten(str(name), _MAX_REPORTED_NAME),
                tool_call_id=tool_call_id or f"unrun_{secrets.token_hex(8)}",
                error_code=exc.error_code,
                error_message="the tool engine is unavailable; retry later",
                execution_time_ms=elapsed,
            )
        except EngineError as exc:
            self._log.warning("tool_call_refused_by_engine", error_code=exc.error_code)
            raise
        self._count(result.status.value, result.execution_time_ms)
        return result

    def _count(self, status: str, elapsed_ms: float) -> None:
        self._by_status[status] += 1
        self._total_ms += max(0.0, elapsed_ms)

    async def _emit(self, payload: EventPayload) -> None:
        if await emit_to_completion(self._sink, payload, agent_name=self._agent_name):
            self._events_emitted += 1
        else:
            self._events_undelivered += 1

    # -- metrics and lifecycle -------------------------------------------------------------

    def metrics(self) -> DispatcherMetrics:
        executed = sum(self._by_status.values())
        succeeded = self._by_status[ToolStatus.SUCCESS.value]
        return DispatcherMetrics(
            dispatcher_id=self._dispatcher_id,
            agent_name=self._agent_name,
            closed=self._closed,
            tools_executed=executed,
            successful_executions=succeeded,
            failed_executions=executed - succeeded,
            calls_by_status=dict(self._by_status),
            total_execution_time_ms=self._total_ms,
            events_emitted=self._events_emitted,
            events_undelivered=self._events_undelivered,
        )

    async def cleanup(self) -> None:
        """Make the dispatcher unusable and free its per-user slot (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        self._factory._release(self._caller.user_id, self._dispatcher_id, leaked=False)
        self._log.debug("tool_dispatcher_cleaned_up", **self.metrics().model_dump())

    async def __aenter__(self) -> UnifiedToolDispatcher:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.cleanup()
