"""``AgentRunner``: the in-process :class:`~dispatch.agents.api.AgentService`.

:meth:`AgentRunner.start_run` checks the request, takes a run slot (the caller's and the
runner's; past either limit the request is refused at once), derives the run's context
from the caller's (same user and request, the new ``run_id`` and the given or a new
``thread_id``), records the accepted run through //data, builds a fresh agent instance
whose events go to the run's sink (from the factory's event-sink factory, plus an optional
observer such as a gRPC stream) and starts the run as a task of its own.

A run then:

1. is marked RUNNING;
2. runs its agent under the run timeout: the agent emits ``agent_started`` …
   ``agent_completed``, or ``agent_error`` when it fails;
3. when the timeout fires or the owner cancels it, is stopped: the stop reason is recorded
   first and the task cancelled, so the run ends with exactly one ``agent_error`` whose
   ``error_type`` is ``timeout`` or ``cancelled`` (:class:`~dispatch.agents.events.AgentEvents`
   lets only one terminal event out, whoever races);
4. is recorded as it ended, exactly as its terminal event said;
5. gives back everything: its slots, its dispatcher (closed by the agent on the way out),
   its sinks (closed), and no data scope stays open (every persistence step opens and
   closes its own).

Run state lives in this runner object (no module-level registry): runs are keyed by
``run_id`` and always checked against the caller's ``user_id``, so another user's run is
"not found", exactly like a run that never existed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from dataclasses import dataclass, field

import structlog

from context.api import (
    ContextError,
    UserExecutionContext,
    context_scope,
    new_run_id,
    new_thread_id,
)
from context.execution_context import check_context_id
from data.api import DataAccessFactory
from dispatch.agents import persistence
from dispatch.agents.api import (
    Agent,
    AgentError,
    AgentResult,
    AgentRunnerStats,
    AgentSettings,
    AgentUnavailableError,
    ErrorType,
    InvalidAgentCallerError,
    InvalidRunRequestError,
    RunHandle,
    RunInfo,
    RunnerClosedError,
    RunNotFoundError,
    RunState,
    UnknownAgentError,
)
from dispatch.agents.events import TerminalEvent
from dispatch.agents.factory import AgentInstanceFactory
from dispatch.agents.failures import classify_failure
from dispatch.agents.limits import RunSlots
from dispatch.engine.api import ToolCaller
from dispatch.tools.api import EventSinkFactory, EventType, RunEventSink
from dispatch.tools.sinks import FanOutEventSink, close_sink

__all__ = ["AgentRunner"]

log = structlog.get_logger(__name__)

_MAX_LOOKUP_ID = 128


@dataclass(eq=False, slots=True, kw_only=True)
class _ActiveRun:
    """One run in progress. Owned by the runner; never visible to another user."""

    user_id: str
    agent_name: str
    message: str
    caller: ToolCaller
    agent: Agent
    sinks: tuple[RunEventSink, ...]
    task: asyncio.Task[None] | None = None
    #: Whether the run's task has begun (a task cancelled before it begins never runs).
    entered: bool = False
    #: Whether the outcome is decided; a stop request then changes nothing.
    finishing: bool = False
    stopping: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def context(self) -> UserExecutionContext:
        return self.caller.context

    @property
    def run_id(self) -> str:
        return self.caller.context.run_id


def _ending(terminal: TerminalEvent) -> persistence.RunEnding:
    if terminal.type is EventType.AGENT_COMPLETED:
        answer = terminal.result.answer if terminal.result is not None else ""
        return persistence.RunEnding(state=RunState.COMPLETED, answer=answer)
    error_type = terminal.error_type or ErrorType.INTERNAL_ERROR.value
    state = {
        ErrorType.CANCELLED.value: RunState.CANCELLED,
        ErrorType.TIMEOUT.value: RunState.TIMED_OUT,
    }.get(error_type, RunState.FAILED)
    return persistence.RunEnding(
        state=state, error_type=error_type, error_message=terminal.error_message
    )


class AgentRunner:
    """Runs agents for verified callers; see the module docstring.

    ``settings`` default to the factory's. Not a singleton: the composition root owns one.
    """

    def __init__(
        self, factory: AgentInstanceFactory, *, settings: AgentSettings | None = None
    ) -> None:
        self._factory = factory
        self._settings = settings or factory.settings
        self._data: DataAccessFactory = factory.data_factory
        self._slots = RunSlots(
            per_user=self._settings.max_runs_per_user, total=self._settings.max_runs_total
        )
        self._runs: dict[str, _ActiveRun] = {}
        self._started = 0
        self._finished: Counter[str] = Counter()
        self._closed = False

    @property
    def settings(self) -> AgentSettings:
        return self._settings

    @property
    def factory(self) -> AgentInstanceFactory:
        return self._factory

    # -- checks --------------------------------------------------------------------------------

    def _check_caller(self, caller: object) -> ToolCaller:
        if not isinstance(caller, ToolCaller):
            raise InvalidAgentCallerError(
                f"runs are started by a verified ToolCaller, got {type(caller).__name__}"
            )
        return caller

    def _check_message(self, message: object) -> str:
        if not isinstance(message, str):
            raise InvalidRunRequestError("message must be a string")
        if not message.strip():
            raise InvalidRunRequestError("message must not be empty")
        if len(message) > self._settings.max_message_chars:
            raise InvalidRunRequestError(
                f"message is longer than {self._settings.max_message_chars} characters"
            )
        if "\x00" in message:
            # Not storable as text in every backend (PostgreSQL refuses NUL in text).
            raise InvalidRunRequestError("message must not contain NUL characters")
        return message

    @staticmethod
    def _check_thread_id(thread_id: object) -> str:
        try:
            return check_context_id(thread_id, "thread_id")
        except ContextError as exc:
            raise InvalidRunRequestError(exc.message) from None

    def _owned(self, caller: ToolCaller, run_id: object) -> _ActiveRun | None:
        run = self._runs.get(run_id) if isinstance(run_id, str) else None
        if run is None or run.user_id != caller.user_id:
            return None
        return run

    # -- AgentService --------------------------------------------------------------------------

    async def start_run(
        self,
        caller: ToolCaller,
        agent_name: str,
        message: str,
        *,
        thread_id: str | None = None,
        observer: EventSinkFactory | None = None,
    ) -> RunHandle:
        """Start a run; see the module docstring. ``observer`` builds an extra sink that
        receives every event of the run too (the gRPC servicer streams from it)."""
        if self._closed:
            raise RunnerClosedError("the agent runner is shut down")
        caller = self._check_caller(caller)
        if not self._factory.has_agent(agent_name):
            shown = repr(agent_name)[:64]
            known = ", ".join(sorted(self._factory.agent_types))
            raise UnknownAgentError(f"no agent named {shown}; known: {known}")
        message = self._check_message(message)
        given_thread = None if thread_id is None else self._check_thread_id(thread_id)
        self._slots.acquire(caller.user_id)
        try:
            run = await self._accept(caller, agent_name, message, given_thread, observer)
        except BaseException:
            self._slots.release(caller.user_id)
            raise
        self._runs[run.run_id] = run
        self._started += 1
        run.task = asyncio.create_task(self._execute(run), name=f"agent-run:{run.run_id}")
        return RunHandle(run_id=run.run_id, thread_id=run.context.thread_id, agent_name=agent_name)

    async def _accept(
        self,
        caller: ToolCaller,
        agent_name: str,
        message: str,
        thread_id: str | None,
        observer: EventSinkFactory | None,
    ) -> _ActiveRun:
        run_ctx = dataclasses.replace(
            caller.context,
            run_id=new_run_id(),
            thread_id=thread_id if thread_id is not None else new_thread_id(),
        )
        run_caller = caller.model_copy(update={"context": run_ctx})
        await persistence.record_accepted(
            self._data,
            run_ctx,
            agent_name=agent_name,
            message=message,
            new_thread=thread_id is None,
        )
        sinks: list[RunEventSink] = []
        try:
            sinks.append(self._factory.create_event_sink(run_ctx, agent_name))
            if observer is not None:
                sinks.append(observer(run_ctx, agent_name))
            sink = sinks[0] if len(sinks) == 1 else FanOutEventSink(sinks)
            agent = self._factory.create_agent_instance(agent_name, run_caller, sink=sink)
        except Exception as exc:
            await close_sink(*sinks)
            failure = classify_failure(exc)
            await self._record_quietly(
                run_ctx,
                persistence.RunEnding(
                    state=RunState.FAILED,
                    error_type=failure.error_type.value,
                    error_message=failure.message,
                ),
            )
            if isinstance(exc, AgentError):
                raise
            log.error("agent_run_setup_failed", exc_type=type(exc).__name__, exc_info=True)
            raise AgentUnavailableError("the run could not be set up; retry later") from exc
        return _ActiveRun(
            user_id=caller.user_id,
            agent_name=agent_name,
            message=message,
            caller=run_caller,
            agent=agent,
            sinks=tuple(sinks),
        )

    async def get_run(self, caller: ToolCaller, run_id: str) -> RunInfo:
        caller = self._check_caller(caller)
        raw: object = run_id
        if not isinstance(raw, str) or not raw or len(raw) > _MAX_LOOKUP_ID:
            raise RunNotFoundError("you have no run with that id")
        return await persistence.load_run(self._data, caller.context, run_id)

    async def cancel_run(self, caller: ToolCaller, run_id: str) -> RunInfo:
        caller = self._check_caller(caller)
        run = self._owned(caller, run_id)
        if run is not None:
            self._stop(run, ErrorType.CANCELLED, "the run was cancelled by its owner")
            await asyncio.shield(run.done.wait())
        return await self.get_run(caller, run_id)

    def cancel_run_nowait(self, caller: ToolCaller, run_id: str) -> bool:
        """Ask one of the caller's runs to stop without waiting for it to end.

        For code that cannot wait (a stream handler being cancelled). True if the run was
        in progress and is now stopping.
        """
        caller = self._check_caller(caller)
        run = self._owned(caller, run_id)
        if run is None:
            return False
        return self._stop(run, ErrorType.CANCELLED, "the run was cancelled by its owner")

    async def wait_run(self, caller: ToolCaller, run_id: str) -> RunInfo:
        """Wait until one of the caller's runs has ended and return it."""
        caller = self._check_caller(caller)
        run = self._owned(caller, run_id)
        if run is not None:
            await asyncio.shield(run.done.wait())
        return await self.get_run(caller, run_id)

    # -- the run -------------------------------------------------------------------------------

    def _stop(self, run: _ActiveRun, reason: ErrorType, message: str) -> bool:
        """Record why ``run`` stops and cancel its task (once; never once it is finishing)."""
        if run.finishing or run.stopping:
            return False
        run.stopping = True
        run.agent.events.request_stop(reason, message)
        if run.entered and run.task is not None:
            run.task.cancel()
        log.info("agent_run_stopping", user_id=run.user_id, run_id=run.run_id, reason=reason.value)
        return True

    async def _execute(self, run: _ActiveRun) -> None:
        run.entered = True
        try:
            with context_scope(run.context):
                terminal = await self._drive(run)
                run.finishing = True
                ending = _ending(terminal)
                await self._record_quietly(run.context, ending)
                self._finished[ending.state.value] += 1
        finally:
            run.finishing = True
            self._runs.pop(run.run_id, None)
            self._slots.release(run.user_id)
            await close_sink(*run.sinks)
            run.done.set()

    async def _drive(self, run: _ActiveRun) -> TerminalEvent:
        """Run the agent until it ends one way or another; return its terminal event."""
        events = run.agent.events
        result: AgentResult | None = None
        if not run.stopping:
            loop = asyncio.get_running_loop()
            timeout = self._settings.run_timeout_seconds
            timer = loop.call_later(
                timeout,
                self._stop,
                run,
                ErrorType.TIMEOUT,
                f"the run did not finish within {timeout:g} seconds",
            )
            try:
                await persistence.record_running(self._data, run.context)
                result = await run.agent.run(run.message)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                await events.error_for_stop()
            except Exception as exc:
                failure = classify_failure(exc)
                await events.error(
                    failure.error_type, failure.message, recoverable=failure.recoverable
                )
            finally:
                timer.cancel()
        if events.terminal is None:
            # Stopped before it began, or an agent that ended without saying so.
            if result is not None:
                await events.completed(result)
            else:
                await events.error_for_stop()
        terminal = events.terminal
        assert terminal is not None  # every path above claimed the end
        return terminal

    async def _record_quietly(
        self, ctx: UserExecutionContext, ending: persistence.RunEnding
    ) -> None:
        try:
            await persistence.record_finished(self._data, ctx, ending)
        except Exception as exc:
            # The events already told the client; the record is best effort from here.
            log.error(
                "agent_run_not_recorded",
                user_id=ctx.user_id,
                run_id=ctx.run_id,
                state=ending.state.value,
                exc_type=type(exc).__name__,
            )

    # -- statistics and shutdown ---------------------------------------------------------------

    def stats(self) -> AgentRunnerStats:
        return AgentRunnerStats(
            active_runs=self._slots.active(),
            active_runs_per_user=self._slots.per_user(),
            max_runs_per_user=self._slots.per_user_limit,
            max_runs_total=self._slots.total_limit,
            started=self._started,
            refused_user_limit=self._slots.refused_user,
            refused_global_limit=self._slots.refused_global,
            finished_by_state=dict(self._finished),
            closed=self._closed,
        )

    async def aclose(self) -> None:
        """Refuse new runs, cancel the ones in progress and wait until they have ended."""
        self._closed = True
        runs = list(self._runs.values())
        for run in runs:
            self._stop(run, ErrorType.CANCELLED, "the service is shutting down")
        for run in runs:
            await run.done.wait()
