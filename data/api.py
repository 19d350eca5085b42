"""The typed interface of per-user data access: errors, models and Protocols.

Everything a caller needs to use user data without knowing the backend:

- one error hierarchy (:class:`DataError` and subclasses), each class with a stable
  ``error_code`` and the name of the gRPC status an adapter maps it to;
- immutable pydantic models of what is stored: :class:`Thread`, :class:`Message`,
  :class:`Run`, :class:`RunEvent`, :class:`Note`, :class:`ToolUsage`;
- the Protocols: a :class:`DataAccessFactory` opens a :class:`UserDataScope` for one
  :class:`~context.UserExecutionContext`; the scope's repositories and cache act for that
  context's user only.

No method takes a user id. The user is always the one of the context the scope was opened
for, so code holding a scope cannot ask for another user's data; an ID that belongs to
another user is reported exactly like an ID that does not exist (:class:`NotFoundError`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from context import UserExecutionContext

__all__ = [
    "MAX_AGENT_NAME_LENGTH",
    "MAX_CACHE_KEY_LENGTH",
    "MAX_CACHE_VALUE_BYTES",
    "MAX_CONTENT_LENGTH",
    "MAX_ERROR_LENGTH",
    "MAX_EVENT_TYPE_LENGTH",
    "MAX_JSON_BYTES",
    "MAX_LIST_LIMIT",
    "MAX_LOOKUP_ID_LENGTH",
    "MAX_NOTE_LENGTH",
    "MAX_SEARCH_LENGTH",
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "MAX_TITLE_LENGTH",
    "MAX_TOOL_NAME_LENGTH",
    "AlreadyExistsError",
    "DataAccessDeniedError",
    "DataAccessFactory",
    "DataError",
    "DataUnavailableError",
    "FactoryClosedError",
    "FactoryStats",
    "InvalidInputError",
    "InvalidTransitionError",
    "Message",
    "MessageRepository",
    "MessageRole",
    "NotAUserContextError",
    "NotAuthenticatedError",
    "NotFoundError",
    "Note",
    "NoteRepository",
    "Run",
    "RunEvent",
    "RunEventRepository",
    "RunRepository",
    "RunStatus",
    "ScopeClosedError",
    "ScopeLimitExceededError",
    "Thread",
    "ThreadRepository",
    "ToolUsage",
    "ToolUsageRepository",
    "TransactionAbortedError",
    "UserCache",
    "UserDataAccess",
    "UserDataAccessProvider",
    "UserDataScope",
]

# -- limits (checked before anything reaches a backend) ---------------------------------

MAX_TITLE_LENGTH = 200
MAX_CONTENT_LENGTH = 100_000
MAX_NOTE_LENGTH = 20_000
MAX_SEARCH_LENGTH = 200
MAX_TAGS = 20
MAX_TAG_LENGTH = 64
MAX_AGENT_NAME_LENGTH = 128
MAX_TOOL_NAME_LENGTH = 128
MAX_EVENT_TYPE_LENGTH = 64
MAX_ERROR_LENGTH = 2_000
MAX_JSON_BYTES = 64 * 1024
MAX_LIST_LIMIT = 500
#: Longer strings are refused as IDs before any lookup.
MAX_LOOKUP_ID_LENGTH = 128
MAX_CACHE_KEY_LENGTH = 256
MAX_CACHE_VALUE_BYTES = 1024 * 1024


# -- errors ----------------------------------------------------------------------------


class DataError(Exception):
    """Base class of every error the ``data`` package raises on purpose.

    ``error_code`` is stable (logs, API bodies, tests); ``grpc_status_name`` names the
    ``grpc.StatusCode`` member the gRPC adapter maps the error to. Messages never contain
    another user's data: at most the ID the caller itself supplied.
    """

    error_code: ClassVar[str] = "DATA_ERROR"
    grpc_status_name: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(DataError):
    """An argument is malformed, too large or out of range. Nothing was written."""

    error_code: ClassVar[str] = "INVALID_INPUT"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"


class NotAUserContextError(InvalidInputError):
    """A scope was requested for something that is not a ``UserExecutionContext``."""

    error_code: ClassVar[str] = "NOT_A_USER_CONTEXT"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"


class NotFoundError(DataError):
    """No object with that ID exists for this user (whether or not another user has one)."""

    error_code: ClassVar[str] = "NOT_FOUND"
    grpc_status_name: ClassVar[str] = "NOT_FOUND"


class AlreadyExistsError(DataError):
    """This user already has an object with the ID the caller chose."""

    error_code: ClassVar[str] = "ALREADY_EXISTS"
    grpc_status_name: ClassVar[str] = "ALREADY_EXISTS"


class InvalidTransitionError(DataError):
    """A run cannot move from its current status to the one asked for."""

    error_code: ClassVar[str] = "INVALID_RUN_TRANSITION"
    grpc_status_name: ClassVar[str] = "FAILED_PRECONDITION"


class ScopeLimitExceededError(DataError):
    """The user already has the maximum number of live data scopes."""

    error_code: ClassVar[str] = "SCOPE_LIMIT_EXCEEDED"
    grpc_status_name: ClassVar[str] = "RESOURCE_EXHAUSTED"


class ScopeClosedError(DataError):
    """The scope was closed (exited, reclaimed after its idle TTL, or shut down)."""

    error_code: ClassVar[str] = "SCOPE_CLOSED"
    grpc_status_name: ClassVar[str] = "FAILED_PRECONDITION"


class TransactionAbortedError(DataError):
    """The scope's transaction was lost with uncommitted writes in it.

    Raised by every call on the scope until the caller acknowledges the loss with
    ``await scope.rollback()``, so work never continues as if the lost writes existed.
    """

    error_code: ClassVar[str] = "TRANSACTION_ABORTED"
    grpc_status_name: ClassVar[str] = "ABORTED"


class NotAuthenticatedError(DataError):
    """A remote call arrived without a verified caller identity (no bound context)."""

    error_code: ClassVar[str] = "NOT_AUTHENTICATED"
    grpc_status_name: ClassVar[str] = "UNAUTHENTICATED"


class DataAccessDeniedError(DataError):
    """The database refused a statement for this user (row-level security)."""

    error_code: ClassVar[str] = "DATA_ACCESS_DENIED"
    grpc_status_name: ClassVar[str] = "PERMISSION_DENIED"


class DataUnavailableError(DataError):
    """A backend (database or cache) cannot be reached or is overloaded; retry later."""

    error_code: ClassVar[str] = "DATA_UNAVAILABLE"
    grpc_status_name: ClassVar[str] = "UNAVAILABLE"


class FactoryClosedError(DataUnavailableError):
    """The data access factory was shut down."""

    error_code: ClassVar[str] = "DATA_FACTORY_CLOSED"
    grpc_status_name: ClassVar[str] = "UNAVAILABLE"


# -- models ----------------------------------------------------------------------------

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Thread(BaseModel):
    """A conversation of one user."""

    model_config = _FROZEN

    id: str
    title: str
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime


class MessageRole(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    TOOL = "tool"


class Message(BaseModel):
    """One message of a thread."""

    model_config = _FROZEN

    id: str
    thread_id: str
    role: MessageRole
    content: str
    run_id: str | None = None
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    created_at: datetime


class RunStatus(enum.StrEnum):
    """Life cycle of an agent run: PENDING → RUNNING → COMPLETED | FAILED | CANCELLED.

    A PENDING run may also end directly (FAILED or CANCELLED). Terminal states are final.
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    def can_become(self, target: RunStatus) -> bool:
        return target in _TRANSITIONS[self]


_TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset({RunStatus.RUNNING, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.RUNNING: _TERMINAL,
    RunStatus.COMPLETED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}


class Run(BaseModel):
    """One agent run in a thread, with its status and timings."""

    model_config = _FROZEN

    id: str
    thread_id: str
    agent_name: str
    status: RunStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: str | None = None
    error: str | None = None

    @property
    def duration_ms(self) -> float | None:
        """Milliseconds from start (or creation, if never started) to finish; None if open."""
        if self.finished_at is None:
            return None
        begin = self.started_at or self.created_at
        return (self.finished_at - begin).total_seconds() * 1000.0


class RunEvent(BaseModel):
    """One event a run emitted, numbered by ``seq`` (1, 2, ... per run)."""

    model_config = _FROZEN

    id: str
    run_id: str
    seq: int
    event_type: str
    payload: dict[str, JsonValue] = Field(default_factory=dict)
    created_at: datetime


class Note(BaseModel):
    """One entry of the user's memory, which tools read and write."""

    model_config = _FROZEN

    id: str
    title: str
    content: str
    tags: tuple[str, ...] = ()
    created_at: datetime
    updated_at: datetime


class ToolUsage(BaseModel):
    """A record of one tool execution."""

    model_config = _FROZEN

    id: str
    tool_name: str
    run_id: str | None = None
    success: bool
    duration_ms: float
    error_code: str | None = None
    created_at: datetime


class FactoryStats(BaseModel):
    """A snapshot of a factory's scopes and connections."""

    model_config = _FROZEN

    live_scopes: int
    scopes_per_user: dict[str, int]
    #: Live scopes by age: "0-5m", "5-30m", "30m-2h", "2h+".
    scopes_by_age: dict[str, int]
    scopes_opened: int
    scopes_rejected: int
    scopes_reclaimed: int
    max_scopes_per_user: int
    scope_ttl_seconds: float
    cleanup_task_running: bool
    #: Database connections currently checked out of the pool.
    connections_checked_out: int
    #: Database connections currently open (pooled or checked out).
    connections_open: int
    closed: bool


# -- repositories ------------------------------------------------------------------------


class ThreadRepository(Protocol):
    """The user's threads."""

    async def create(
        self,
        *,
        title: str = "",
        metadata: Mapping[str, JsonValue] | None = None,
        thread_id: str | None = None,
    ) -> Thread:
        """A new thread; ``thread_id`` lets the caller use the ID of its context."""
        ...

    async def get(self, thread_id: str) -> Thread: ...

    async def list(self, *, limit: int = 50) -> Sequence[Thread]:
        """The most recently updated threads first."""
        ...

    async def rename(self, thread_id: str, title: str) -> Thread: ...

    async def delete(self, thread_id: str) -> None:
        """Delete the thread with its messages, runs and run events."""
        ...


class MessageRepository(Protocol):
    """The messages of the user's threads."""

    async def append(
        self,
        thread_id: str,
        *,
        role: MessageRole,
        content: str,
        run_id: str | None = None,
        metadata: Mapping[str, JsonValue] | None = None,
    ) -> Message: ...

    async def get(self, message_id: str) -> Message: ...

    async def list(self, thread_id: str, *, limit: int = 100) -> Sequence[Message]:
        """The thread's latest ``limit`` messages, oldest first."""
        ...


class NoteRepository(Protocol):
    """The user's memory: notes that tools add, read, search and delete."""

    async def add(self, content: str, *, title: str = "", tags: Sequence[str] = ()) -> Note: ...

    async def get(self, note_id: str) -> Note: ...

    async def search(self, query: str, *, limit: int = 20) -> Sequence[Note]:
        """Notes whose title, content or tags contain every word of ``query``.

        Case-insensitive (Unicode case folding); newest first.
        """
        ...

    async def list(self, *, limit: int = 50) -> Sequence[Note]:
        """Newest first."""
        ...

    async def delete(self, note_id: str) -> None: ...


class RunRepository(Protocol):
    """The user's agent runs."""

    async def create(self, *, thread_id: str, agent_name: str, run_id: str | None = None) -> Run:
        """A new PENDING run in one of the user's threads."""
        ...

    async def get(self, run_id: str) -> Run: ...

    async def list(self, *, thread_id: str | None = None, limit: int = 50) -> Sequence[Run]:
        """Newest first, optionally of one thread."""
        ...

    async def start(self, run_id: str) -> Run:
        """PENDING → RUNNING; sets ``started_at``."""
        ...

    async def finish(
        self,
        run_id: str,
        status: RunStatus,
        *,
        result: str | None = None,
        error: str | None = None,
    ) -> Run:
        """Move to a terminal ``status``; sets ``finished_at``."""
        ...


class RunEventRepository(Protocol):
    """Events emitted by the user's runs, kept for replay."""

    async def append(
        self,
        run_id: str,
        *,
        seq: int,
        event_type: str,
        payload: Mapping[str, JsonValue] | None = None,
    ) -> RunEvent:
        """Store event ``seq`` of a run; a seq already stored gives AlreadyExistsError."""
        ...

    async def list(
        self, run_id: str, *, after_seq: int = 0, limit: int = MAX_LIST_LIMIT
    ) -> Sequence[RunEvent]:
        """Events with ``seq > after_seq`` in order."""
        ...


class ToolUsageRepository(Protocol):
    """Records of the user's tool executions."""

    async def record(
        self,
        *,
        tool_name: str,
        success: bool,
        duration_ms: float,
        run_id: str | None = None,
        error_code: str | None = None,
    ) -> ToolUsage: ...

    async def list(
        self, *, run_id: str | None = None, tool_name: str | None = None, limit: int = 100
    ) -> Sequence[ToolUsage]:
        """Newest first."""
        ...

    async def count(
        self, *, tool_name: str | None = None, since: datetime | None = None
    ) -> int: ...


class UserCache(Protocol):
    """The user's cache: string values under keys that only this user's scopes can see."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, *, ttl_seconds: float | None = None) -> None: ...

    async def delete(self, key: str) -> bool:
        """Whether the key existed."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def ttl(self, key: str) -> float | None:
        """Seconds left before the key expires; None if it has no expiry or does not exist."""
        ...

    async def keys(self, prefix: str = "") -> Sequence[str]:
        """This user's keys that start with ``prefix``, sorted."""
        ...

    async def clear(self) -> int:
        """Delete every key of this user; returns how many."""
        ...


# -- scopes and factories ------------------------------------------------------------------


class UserDataAccess(Protocol):
    """The user-facing part of a scope: what is also offered over gRPC.

    In process, a scope is a unit of work (see :class:`UserDataScope`); over gRPC every
    call is its own unit of work.
    """

    @property
    def context(self) -> UserExecutionContext: ...

    @property
    def threads(self) -> ThreadRepository: ...

    @property
    def messages(self) -> MessageRepository: ...

    @property
    def notes(self) -> NoteRepository: ...

    @property
    def runs(self) -> RunRepository: ...


class UserDataScope(UserDataAccess, Protocol):
    """Per-user data access for one context; a unit of work.

    Everything written through a scope is committed when its ``async with`` block ends
    normally and rolled back when it ends with an exception: nothing is half-written.
    Long-lived users commit at checkpoints with :meth:`commit`. A scope serializes its own
    calls; use one scope per concurrent task.
    """

    @property
    def scope_id(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    @property
    def run_events(self) -> RunEventRepository: ...

    @property
    def tool_usage(self) -> ToolUsageRepository: ...

    @property
    def cache(self) -> UserCache: ...

    async def commit(self) -> None:
        """Commit what was written so far; the scope stays usable."""
        ...

    async def rollback(self) -> None:
        """Discard what was written since the last commit; the scope stays usable."""
        ...

    async def wait_closed(self) -> None:
        """Return once the scope is closed (by its owner, its TTL or shutdown)."""
        ...


class UserDataAccessProvider(Protocol):
    """Opens user-facing data access for a context (in process or over gRPC)."""

    def create_user_context(
        self, ctx: UserExecutionContext
    ) -> AbstractAsyncContextManager[UserDataAccess]: ...


class DataAccessFactory(Protocol):
    """The only way to reach user data: ``async with factory.create_user_context(ctx)``."""

    def create_user_context(
        self, ctx: UserExecutionContext
    ) -> AbstractAsyncContextManager[UserDataScope]:
        """A scope for ``ctx``'s user.

        Raises NotAUserContextError (at once) for anything but a UserExecutionContext,
        ScopeLimitExceededError (on entry) when the user has too many live scopes, and
        FactoryClosedError after :meth:`shutdown`.
        """
        ...

    def stats(self) -> FactoryStats: ...

    async def shutdown(self) -> None:
        """Close every scope, stop the clean-up task, close all connections."""
        ...
