"""``threads.list`` and ``runs.list``: the caller's own conversations and agent runs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from context.errors import describe_value
from data.api import MAX_LOOKUP_ID_LENGTH, InvalidInputError, NotFoundError
from dispatch.engine.api import PermissionGroup, ToolAnnotations, ToolFailure
from dispatch.engine.builtin_tools.views import RunView, ThreadView
from dispatch.engine.registry import Tool, ToolInput, ToolInvocation, define_tool

__all__ = [
    "ListRunsInput",
    "ListThreadsInput",
    "RunList",
    "ThreadList",
    "runs_list_tool",
    "threads_list_tool",
]

MAX_LISTED = 100

_READ_ONLY = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)


class ListThreadsInput(ToolInput):
    limit: int = Field(default=20, ge=1, le=MAX_LISTED)


class ListRunsInput(ToolInput):
    thread_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_LOOKUP_ID_LENGTH,
        description="Only the runs of this thread",
    )
    limit: int = Field(default=20, ge=1, le=MAX_LISTED)


class ThreadList(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int
    threads: list[ThreadView]


class RunList(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int
    runs: list[RunView]


async def _threads(invocation: ToolInvocation, args: ListThreadsInput) -> ThreadList:
    threads = await invocation.data.threads.list(limit=args.limit)
    return ThreadList(count=len(threads), threads=[ThreadView.of(t) for t in threads])


async def _runs(invocation: ToolInvocation, args: ListRunsInput) -> RunList:
    try:
        runs = await invocation.data.runs.list(thread_id=args.thread_id, limit=args.limit)
    except (NotFoundError, InvalidInputError):
        raise ToolFailure(
            "THREAD_NOT_FOUND", f"you have no thread with id {describe_value(args.thread_id)}"
        ) from None
    return RunList(count=len(runs), runs=[RunView.of(run) for run in runs])


def threads_list_tool() -> Tool[ListThreadsInput]:
    return define_tool(
        name="threads.list",
        title="List threads",
        description="Your conversation threads, most recently updated first.",
        group=PermissionGroup.BASIC,
        input_model=ListThreadsInput,
        output_model=ThreadList,
        handler=_threads,
        annotations=_READ_ONLY,
    )


def runs_list_tool() -> Tool[ListRunsInput]:
    return define_tool(
        name="runs.list",
        title="List agent runs",
        description=(
            "Your agent runs with status and timings, newest first; optionally of one thread."
        ),
        group=PermissionGroup.BASIC,
        input_model=ListRunsInput,
        output_model=RunList,
        handler=_runs,
        annotations=_READ_ONLY,
    )
