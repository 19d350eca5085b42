"""Recording runs through //data, one short-lived scope per step.

A data factory allows each user only a few live scopes, so a run never holds one while it
works: each step below opens a scope for the run's own context, writes, and commits on
exit (or rolls back on failure):

* :func:`record_accepted` - the thread (created when the request named none, otherwise
  looked up: another user's thread is "not found"), the PENDING run and the user's message;
* :func:`record_running` - PENDING → RUNNING, ``started_at``;
* :func:`record_finished` - the answer as an assistant message and COMPLETED, or
  FAILED / CANCELLED with the error, ``finished_at``;
* :func:`load_run` - one of the caller's runs as a :class:`~dispatch.agents.api.RunInfo`.

The data layer has no "timed out" status: a timed-out run is stored as FAILED with the
error ``"timeout: ..."``, and :func:`run_info` reads it back as ``RunState.TIMED_OUT``. Every
stored error is ``"<error_type>: <message>"``.

Data errors become this package's errors: an unknown thread or run is NOT_FOUND, a user
with too many open scopes is RESOURCE_EXHAUSTED, anything else UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from context.api import UserExecutionContext
from data.api import (
    MAX_CONTENT_LENGTH,
    MAX_ERROR_LENGTH,
    MAX_TITLE_LENGTH,
    DataAccessFactory,
    DataError,
    InvalidInputError,
    MessageRole,
    NotFoundError,
    Run,
    RunStatus,
    ScopeLimitExceededError,
    UserDataScope,
)
from dispatch.agents.api import (
    AgentUnavailableError,
    ErrorType,
    InvalidRunRequestError,
    RunInfo,
    RunLimitExceededError,
    RunNotFoundError,
    RunState,
    ThreadNotFoundError,
)
from dispatch.tools.sanitize import shorten

__all__ = [
    "RunEnding",
    "load_run",
    "record_accepted",
    "record_finished",
    "record_running",
    "run_info",
    "stored_error",
]

_TITLE_CHARS = 60


@dataclass(frozen=True, slots=True)
class RunEnding:
    """How a run ended, as it is stored."""

    state: RunState
    answer: str | None = None
    error_type: str | None = None
    error_message: str | None = None


def stored_error(error_type: str, message: str) -> str:
    """The stored form of a run's error: ``"<error_type>: <message>"``, bounded."""
    return shorten(f"{error_type}: {message}", MAX_ERROR_LENGTH)


def _parse_error(error: str | None) -> tuple[str | None, str | None]:
    if error is None:
        return None, None
    kind, separator, message = error.partition(": ")
    if not separator:
        return None, error
    return kind, message


def run_info(run: Run) -> RunInfo:
    """A stored run as the agents API shows it."""
    error_type, error_message = _parse_error(run.error)
    state = RunState(run.status.value)
    if state is RunState.FAILED and error_type == ErrorType.TIMEOUT.value:
        state = RunState.TIMED_OUT
    return RunInfo(
        run_id=run.id,
        thread_id=run.thread_id,
        agent_name=run.agent_name,
        state=state,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        result=run.result,
        error_type=error_type,
        error_message=error_message,
    )


@asynccontextmanager
async def _scope(
    data: DataAccessFactory, ctx: UserExecutionContext
) -> AsyncIterator[UserDataScope]:
    try:
        async with data.create_user_context(ctx) as scope:
            yield scope
    except ScopeLimitExceededError as exc:
        raise RunLimitExceededError(
            "you have too many requests in progress; retry shortly", scope="user"
        ) from exc
    except NotFoundError:
        raise
    except InvalidInputError as exc:
        raise InvalidRunRequestError(exc.message) from exc
    except DataError as exc:
        raise AgentUnavailableError("run data cannot be stored right now; retry later") from exc


def _title(message: str) -> str:
    first_line = " ".join(message.split())
    return shorten(first_line, min(_TITLE_CHARS, MAX_TITLE_LENGTH))


async def record_accepted(
    data: DataAccessFactory,
    ctx: UserExecutionContext,
    *,
    agent_name: str,
    message: str,
    new_thread: bool,
) -> Run:
    """Thread (new or existing), PENDING run and the user's message, in one unit of work."""
    try:
        async with _scope(data, ctx) as scope:
            if new_thread:
                await scope.threads.create(title=_title(message), thread_id=ctx.thread_id)
            else:
                await scope.threads.get(ctx.thread_id)
            run = await scope.runs.create(
                thread_id=ctx.thread_id, agent_name=agent_name, run_id=ctx.run_id
            )
            await scope.messages.append(
                ctx.thread_id,
                role=MessageRole.USER,
                content=shorten(message, MAX_CONTENT_LENGTH),
                run_id=ctx.run_id,
            )
    except NotFoundError as exc:
        raise ThreadNotFoundError("you have no thread with that id") from exc
    return run


async def record_running(data: DataAccessFactory, ctx: UserExecutionContext) -> None:
    """PENDING → RUNNING."""
    async with _scope(data, ctx) as scope:
        await scope.runs.start(ctx.run_id)


async def record_finished(
    data: DataAccessFactory, ctx: UserExecutionContext, ending: RunEnding
) -> RunInfo:
    """Store the ending: the answer message and COMPLETED, or the error and its status."""
    async with _scope(data, ctx) as scope:
        if ending.state is RunState.COMPLETED:
            answer = shorten(ending.answer or "", MAX_CONTENT_LENGTH)
            if answer:
                await scope.messages.append(
                    ctx.thread_id, role=MessageRole.ASSISTANT, content=answer, run_id=ctx.run_id
                )
            run = await scope.runs.finish(ctx.run_id, RunStatus.COMPLETED, result=answer)
        else:
            status = RunStatus.CANCELLED if ending.state is RunState.CANCELLED else RunStatus.FAILED
            error = stored_error(
                ending.error_type or ErrorType.INTERNAL_ERROR.value, ending.error_message or ""
            )
            run = await scope.runs.finish(ctx.run_id, status, error=error)
    return run_info(run)


async def load_run(data: DataAccessFactory, ctx: UserExecutionContext, run_id: str) -> RunInfo:
    """The caller's run ``run_id`` (read in a scope of the caller's own context)."""
    try:
        async with _scope(data, ctx) as scope:
            run = await scope.runs.get(run_id)
    except (NotFoundError, InvalidRunRequestError) as exc:
        raise RunNotFoundError("you have no run with that id") from exc
    return run_info(run)
