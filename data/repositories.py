"""SQL implementations of the repositories, shared by SQLite and PostgreSQL.

Every statement is filtered by (or, for inserts, stamped with) the scope's user id, on
every backend. On PostgreSQL row-level security enforces the same rule a second time,
underneath, for any statement at all; on SQLite these filters are the isolation.

A repository never opens connections itself: it asks its scope for one through
:class:`ScopeConnections`, which runs the statement inside the scope's transaction (and a
savepoint for writes, so a refused write does not spoil the rest of the unit of work).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import JsonValue
from sqlalchemy import ColumnElement, Row, Select, Table, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from context import IDKind, new_id
from data.api import (
    MAX_AGENT_NAME_LENGTH,
    MAX_CONTENT_LENGTH,
    MAX_ERROR_LENGTH,
    MAX_EVENT_TYPE_LENGTH,
    MAX_LIST_LIMIT,
    MAX_NOTE_LENGTH,
    MAX_SEARCH_LENGTH,
    MAX_TITLE_LENGTH,
    MAX_TOOL_NAME_LENGTH,
    AlreadyExistsError,
    InvalidInputError,
    InvalidTransitionError,
    Message,
    MessageRole,
    Note,
    NotFoundError,
    Run,
    RunEvent,
    RunStatus,
    Thread,
    ToolUsage,
)
from data.faults import is_foreign_key_violation
from data.schema import table
from data.validation import (
    check_duration,
    check_json_object,
    check_limit,
    check_lookup_id,
    check_new_id,
    check_seq,
    check_tags,
    check_text,
)

__all__ = [
    "ScopeConnections",
    "SqlMessageRepository",
    "SqlNoteRepository",
    "SqlRunEventRepository",
    "SqlRunRepository",
    "SqlThreadRepository",
    "SqlToolUsageRepository",
]

THREADS = table("threads")
MESSAGES = table("messages")
RUNS = table("runs")
RUN_EVENTS = table("run_events")
NOTES = table("notes")
TOOL_USAGE = table("tool_usage")

_MAX_SEARCH_TERMS = 10
_MAX_ERROR_CODE_LENGTH = 64


class ScopeConnections(Protocol):
    """What a repository needs from its scope."""

    @property
    def user_id(self) -> str: ...

    def reading(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection inside the scope's transaction, for reads."""
        ...

    def writing(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection inside the scope's transaction and a savepoint, for writes."""
        ...


def _now() -> datetime:
    return datetime.now(UTC)


class _Repository:
    def __init__(self, scope: ScopeConnections) -> None:
        self._scope = scope

    @property
    def _user_id(self) -> str:
        return self._scope.user_id

    async def _one(self, statement: Select[Any]) -> Row[Any] | None:
        async with self._scope.reading() as conn:
            row: Row[Any] | None = (await conn.execute(statement)).first()
        return row

    async def _all(self, statement: Select[Any]) -> Sequence[Row[Any]]:
        async with self._scope.reading() as conn:
            rows: Sequence[Row[Any]] = (await conn.execute(statement)).all()
        return rows

    async def _exists(self, statement: Select[Any]) -> bool:
        return await self._one(statement.limit(1)) is not None

    def _owned(self, table: Table, object_id: str | None = None) -> ColumnElement[bool]:
        """The filter every statement of a repository carries: rows of the scope's user
        (and, given ``object_id``, that one row)."""
        mine = table.c.user_id == self._user_id
        return mine if object_id is None else and_(mine, table.c.id == object_id)

    async def _get_owned(self, table: Table, object_id: str, what: str) -> Row[Any]:
        """The user's row ``object_id`` of ``table``; NotFoundError if there is none (another
        user's row is not found either)."""
        row = await self._one(select(table).where(self._owned(table, object_id)))
        if row is None:
            raise NotFoundError(f"{what} {object_id!r} not found")
        return row

    async def _delete_owned(self, table: Table, object_id: str, what: str) -> None:
        async with self._scope.writing() as conn:
            deleted = await conn.execute(delete(table).where(self._owned(table, object_id)))
        if not deleted.rowcount:
            raise NotFoundError(f"{what} {object_id!r} not found")

    async def _require_thread(self, thread_id: str) -> None:
        if not await self._exists(select(THREADS.c.id).where(self._owned(THREADS, thread_id))):
            raise NotFoundError(f"thread {thread_id!r} not found")

    async def _require_run(self, run_id: str) -> None:
        if not await self._exists(select(RUNS.c.id).where(self._owned(RUNS, run_id))):
            raise NotFoundError(f"run {run_id!r} not found")


# -- threads ------------------------------------------------------------------------------


def _thread(row: Row[Any]) -> Thread:
    return Thread(
        id=row.id,
        title=row.title,
        metadata=row.metadata,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class SqlThreadRepository(_Repository):
    async def create(
        self,
        *,
        title: str = "",
        metadata: Mapping[str, JsonValue] | None = None,
        thread_id: str | None = None,
    ) -> Thread:
        title = check_text(title, "title", MAX_TITLE_LENGTH)
        meta = check_json_object(metadata, "metadata")
        thread_id = (
            new_id(IDKind.THREAD) if thread_id is None else check_new_id(thread_id, "thread_id")
        )
        now = _now()
        values = {
            "user_id": self._user_id,
            "id": thread_id,
            "title": title,
            "metadata": meta,
            "created_at": now,
            "updated_at": now,
        }
        async with self._scope.writing() as conn:
            try:
                await conn.execute(insert(THREADS).values(values))
            except IntegrityError as error:
                raise AlreadyExistsError(f"thread {thread_id!r} already exists") from error
        return Thread(id=thread_id, title=title, metadata=meta, created_at=now, updated_at=now)

    async def get(self, thread_id: str) -> Thread:
        thread_id = check_lookup_id(thread_id, "thread_id")
        return _thread(await self._get_owned(THREADS, thread_id, "thread"))

    async def list(self, *, limit: int = 50) -> Sequence[Thread]:
        limit = check_limit(limit)
        rows = await self._all(
            select(THREADS)
            .where(self._owned(THREADS))
            .order_by(THREADS.c.updated_at.desc(), THREADS.c.id.desc())
            .limit(limit)
        )
        return [_thread(row) for row in rows]

    async def rename(self, thread_id: str, title: str) -> Thread:
        thread_id = check_lookup_id(thread_id, "thread_id")
        title = check_text(title, "title", MAX_TITLE_LENGTH)
        statement = (
            update(THREADS)
            .where(self._owned(THREADS, thread_id))
            .values(title=title, updated_at=_now())
            .returning(*THREADS.c)
        )
        async with self._scope.writing() as conn:
            row = (await conn.execute(statement)).first()
        if row is None:
            raise NotFoundError(f"thread {thread_id!r} not found")
        return _thread(row)

    async def delete(self, thread_id: str) -> None:
        await self._delete_owned(THREADS, check_lookup_id(thread_id, "thread_id"), "thread")


# -- messages -----------------------------------------------------------------------------


def _message(row: Row[Any]) -> Message:
    return Message(
        id=row.id,
        thread_id=row.thread_id,
        role=MessageRole(row.role),
        content=row.content,
        run_id=row.run_id,
        metadata=row.metadata,
        created_at=row.created_at,
    )


def _role(value: object) -> MessageRole:
    try:
        return MessageRole(str(value) if isinstance(value, str) else "")
    except ValueError:
        allowed = ", ".join(role.value for role in MessageRole)
        raise InvalidInputError(f"role must be one of {allowed}") from None


class SqlMessageRepository(_Repository):
    async def append(
        self,
        thread_id: str,
        *,
        role: MessageRole,
        content: str,
        run_id: str | None = None,
        metadata: Mapping[str, JsonValue] | None = None,
    ) -> Message:
        thread_id = check_lookup_id(thread_id, "thread_id")
        role = _role(role)
        content = check_text(content, "content", MAX_CONTENT_LENGTH)
        meta = check_json_object(metadata, "metadata")
        if run_id is not None:
            run_id = check_lookup_id(run_id, "run_id")
        await self._require_thread(thread_id)
        if run_id is not None:
            await self._require_run(run_id)
        message_id = new_id(IDKind.MESSAGE)
        now = _now()
        async with self._scope.writing() as conn:
            try:
                await conn.execute(
                    insert(MESSAGES).values(
                        user_id=self._user_id,
                        id=message_id,
                        thread_id=thread_id,
                        role=role.value,
                        content=content,
                        run_id=run_id,
                        metadata=meta,
                        created_at=now,
                    )
                )
            except IntegrityError as error:  # the thread was deleted meanwhile
                raise NotFoundError(f"thread {thread_id!r} not found") from error
            await conn.execute(
                update(THREADS).where(self._owned(THREADS, thread_id)).values(updated_at=now)
            )
        return Message(
            id=message_id,
            thread_id=thread_id,
            role=role,
            content=content,
            run_id=run_id,
            metadata=meta,
            created_at=now,
        )

    async def get(self, message_id: str) -> Message:
        message_id = check_lookup_id(message_id, "message_id")
        return _message(await self._get_owned(MESSAGES, message_id, "message"))

    async def list(self, thread_id: str, *, limit: int = 100) -> Sequence[Message]:
        thread_id = check_lookup_id(thread_id, "thread_id")
        limit = check_limit(limit)
        await self._require_thread(thread_id)
        rows = await self._all(
            select(MESSAGES)
            .where(self._owned(MESSAGES), MESSAGES.c.thread_id == thread_id)
            .order_by(MESSAGES.c.created_at.desc(), MESSAGES.c.id.desc())
            .limit(limit)
        )
        return [_message(row) for row in reversed(rows)]


# -- notes --------------------------------------------------------------------------------


def _note(row: Row[Any]) -> Note:
    return Note(
        id=row.id,
        title=row.title,
        content=row.content,
        tags=tuple(row.tags),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _search_text(title: str, content: str, tags: Sequence[str]) -> str:
    return "\n".join([title, content, *tags]).casefold()


class SqlNoteRepository(_Repository):
    async def add(self, content: str, *, title: str = "", tags: Sequence[str] = ()) -> Note:
        content = check_text(content, "content", MAX_NOTE_LENGTH, allow_empty=False)
        title = check_text(title, "title", MAX_TITLE_LENGTH)
        clean_tags = check_tags(tags)
        note_id = new_id(IDKind.NOTE)
        now = _now()
        async with self._scope.writing() as conn:
            await conn.execute(
                insert(NOTES).values(
                    user_id=self._user_id,
                    id=note_id,
                    title=title,
                    content=content,
                    tags=list(clean_tags),
                    search_text=_search_text(title, content, clean_tags),
                    created_at=now,
                    updated_at=now,
                )
            )
        return Note(
            id=note_id,
            title=title,
            content=content,
            tags=clean_tags,
            created_at=now,
            updated_at=now,
        )

    async def get(self, note_id: str) -> Note:
        note_id = check_lookup_id(note_id, "note_id")
        return _note(await self._get_owned(NOTES, note_id, "note"))

    async def search(self, query: str, *, limit: int = 20) -> Sequence[Note]:
        query = check_text(query, "query", MAX_SEARCH_LENGTH, allow_empty=False)
        limit = check_limit(limit)
        terms = list(dict.fromkeys(query.casefold().split()))
        if len(terms) > _MAX_SEARCH_TERMS:
            raise InvalidInputError(f"a search may have at most {_MAX_SEARCH_TERMS} words")
        conditions = [NOTES.c.search_text.contains(term, autoescape=True) for term in terms]
        rows = await self._all(
            select(NOTES)
            .where(self._owned(NOTES), and_(*conditions))
            .order_by(NOTES.c.created_at.desc(), NOTES.c.id.desc())
            .limit(limit)
        )
        return [_note(row) for row in rows]

    async def list(self, *, limit: int = 50) -> Sequence[Note]:
        limit = check_limit(limit)
        rows = await self._all(
            select(NOTES)
            .where(self._owned(NOTES))
            .order_by(NOTES.c.created_at.desc(), NOTES.c.id.desc())
            .limit(limit)
        )
        return [_note(row) for row in rows]

    async def delete(self, note_id: str) -> None:
        await self._delete_owned(NOTES, check_lookup_id(note_id, "note_id"), "note")


# -- runs ---------------------------------------------------------------------------------


def _run(row: Row[Any]) -> Run:
    return Run(
        id=row.id,
        thread_id=row.thread_id,
        agent_name=row.agent_name,
        status=RunStatus(row.status),
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        result=row.result,
        error=row.error,
    )


class SqlRunRepository(_Repository):
    async def create(self, *, thread_id: str, agent_name: str, run_id: str | None = None) -> Run:
        thread_id = check_lookup_id(thread_id, "thread_id")
        agent_name = check_text(agent_name, "agent_name", MAX_AGENT_NAME_LENGTH, allow_empty=False)
        run_id = new_id(IDKind.RUN) if run_id is None else check_new_id(run_id, "run_id")
        await self._require_thread(thread_id)
        now = _now()
        async with self._scope.writing() as conn:
            try:
                await conn.execute(
                    insert(RUNS).values(
                        user_id=self._user_id,
                        id=run_id,
                        thread_id=thread_id,
                        agent_name=agent_name,
                        status=RunStatus.PENDING.value,
                        created_at=now,
                    )
                )
            except IntegrityError as error:
                if is_foreign_key_violation(error):  # the thread was deleted meanwhile
                    raise NotFoundError(f"thread {thread_id!r} not found") from error
                raise AlreadyExistsError(f"run {run_id!r} already exists") from error
        return Run(
            id=run_id,
            thread_id=thread_id,
            agent_name=agent_name,
            status=RunStatus.PENDING,
            created_at=now,
        )

    async def get(self, run_id: str) -> Run:
        run_id = check_lookup_id(run_id, "run_id")
        return _run(await self._get_owned(RUNS, run_id, "run"))

    async def list(self, *, thread_id: str | None = None, limit: int = 50) -> Sequence[Run]:
        limit = check_limit(limit)
        query = select(RUNS).where(self._owned(RUNS))
        if thread_id is not None:
            thread_id = check_lookup_id(thread_id, "thread_id")
            await self._require_thread(thread_id)
            query = query.where(RUNS.c.thread_id == thread_id)
        rows = await self._all(
            query.order_by(RUNS.c.created_at.desc(), RUNS.c.id.desc()).limit(limit)
        )
        return [_run(row) for row in rows]

    async def start(self, run_id: str) -> Run:
        return await self._transition(run_id, RunStatus.RUNNING, {"started_at": _now()})

    async def finish(
        self,
        run_id: str,
        status: RunStatus,
        *,
        result: str | None = None,
        error: str | None = None,
    ) -> Run:
        try:
            target = RunStatus(status)
        except ValueError:
            raise InvalidInputError("status must be a run status") from None
        if not target.is_terminal:
            raise InvalidInputError(
                "finish needs a terminal status: completed, failed or cancelled"
            )
        values: dict[str, Any] = {"finished_at": _now()}
        if result is not None:
            values["result"] = check_text(result, "result", MAX_CONTENT_LENGTH)
        if error is not None:
            values["error"] = check_text(error, "error", MAX_ERROR_LENGTH)
        return await self._transition(run_id, target, values)

    async def _transition(self, run_id: str, target: RunStatus, values: dict[str, Any]) -> Run:
        run_id = check_lookup_id(run_id, "run_id")
        sources = [status.value for status in RunStatus if status.can_become(target)]
        statement = (
            update(RUNS)
            .where(self._owned(RUNS, run_id), RUNS.c.status.in_(sources))
            .values(status=target.value, **values)
            .returning(*RUNS.c)
        )
        async with self._scope.writing() as conn:
            row = (await conn.execute(statement)).first()
        if row is not None:
            return _run(row)
        current = await self.get(run_id)  # NotFoundError if it is not this user's run
        raise InvalidTransitionError(
            f"run {run_id!r} is {current.status.value} and cannot become {target.value}"
        )


# -- run events ---------------------------------------------------------------------------


def _event(row: Row[Any]) -> RunEvent:
    return RunEvent(
        id=row.id,
        run_id=row.run_id,
        seq=row.seq,
        event_type=row.event_type,
        payload=row.payload,
        created_at=row.created_at,
    )


class SqlRunEventRepository(_Repository):
    async def append(
        self,
        run_id: str,
        *,
        seq: int,
        event_type: str,
        payload: Mapping[str, JsonValue] | None = None,
    ) -> RunEvent:
        run_id = check_lookup_id(run_id, "run_id")
        seq = check_seq(seq)
        event_type = check_text(event_type, "event_type", MAX_EVENT_TYPE_LENGTH, allow_empty=False)
        body = check_json_object(payload, "payload")
        await self._require_run(run_id)
        event_id = new_id(IDKind.EVENT)
        now = _now()
        async with self._scope.writing() as conn:
            try:
                await conn.execute(
                    insert(RUN_EVENTS).values(
                        user_id=self._user_id,
                        id=event_id,
                        run_id=run_id,
                        seq=seq,
                        event_type=event_type,
                        payload=body,
                        created_at=now,
                    )
                )
            except IntegrityError as error:
                if is_foreign_key_violation(error):  # the run was deleted meanwhile
                    raise NotFoundError(f"run {run_id!r} not found") from error
                raise AlreadyExistsError(f"run {run_id!r} already has event {seq}") from error
        return RunEvent(
            id=event_id, run_id=run_id, seq=seq, event_type=event_type, payload=body, created_at=now
        )

    async def list(
        self, run_id: str, *, after_seq: int = 0, limit: int = MAX_LIST_LIMIT
    ) -> Sequence[RunEvent]:
        run_id = check_lookup_id(run_id, "run_id")
        after_seq = check_seq(after_seq, "after_seq", minimum=0)
        limit = check_limit(limit)
        await self._require_run(run_id)
        rows = await self._all(
            select(RUN_EVENTS)
            .where(
                self._owned(RUN_EVENTS),
                RUN_EVENTS.c.run_id == run_id,
                RUN_EVENTS.c.seq > after_seq,
            )
            .order_by(RUN_EVENTS.c.seq)
            .limit(limit)
        )
        return [_event(row) for row in rows]


# -- tool usage ---------------------------------------------------------------------------


def _usage(row: Row[Any]) -> ToolUsage:
    return ToolUsage(
        id=row.id,
        tool_name=row.tool_name,
        run_id=row.run_id,
        success=row.success,
        duration_ms=row.duration_ms,
        error_code=row.error_code,
        created_at=row.created_at,
    )


class SqlToolUsageRepository(_Repository):
    async def record(
        self,
        *,
        tool_name: str,
        success: bool,
        duration_ms: float,
        run_id: str | None = None,
        error_code: str | None = None,
    ) -> ToolUsage:
        tool_name = check_text(tool_name, "tool_name", MAX_TOOL_NAME_LENGTH, allow_empty=False)
        if not isinstance(success, bool):
            raise InvalidInputError("success must be a boolean")
        duration = check_duration(duration_ms)
        if run_id is not None:
            run_id = check_lookup_id(run_id, "run_id")
        if error_code is not None:
            error_code = check_text(error_code, "error_code", _MAX_ERROR_CODE_LENGTH)
        usage_id = new_id(IDKind.TOOL)
        now = _now()
        async with self._scope.writing() as conn:
            await conn.execute(
                insert(TOOL_USAGE).values(
                    user_id=self._user_id,
                    id=usage_id,
                    tool_name=tool_name,
                    run_id=run_id,
                    success=success,
                    duration_ms=duration,
                    error_code=error_code,
                    created_at=now,
                )
            )
        return ToolUsage(
            id=usage_id,
            tool_name=tool_name,
            run_id=run_id,
            success=success,
            duration_ms=duration,
            error_code=error_code,
            created_at=now,
        )

    async def list(
        self, *, run_id: str | None = None, tool_name: str | None = None, limit: int = 100
    ) -> Sequence[ToolUsage]:
        limit = check_limit(limit)
        query = select(TOOL_USAGE).where(self._owned(TOOL_USAGE))
        if run_id is not None:
            query = query.where(TOOL_USAGE.c.run_id == check_lookup_id(run_id, "run_id"))
        if tool_name is not None:
            name = check_text(tool_name, "tool_name", MAX_TOOL_NAME_LENGTH)
            query = query.where(TOOL_USAGE.c.tool_name == name)
        rows = await self._all(
            query.order_by(TOOL_USAGE.c.created_at.desc(), TOOL_USAGE.c.id.desc()).limit(limit)
        )
        return [_usage(row) for row in rows]

    async def count(self, *, tool_name: str | None = None, since: datetime | None = None) -> int:
        query = select(func.count()).select_from(TOOL_USAGE).where(self._owned(TOOL_USAGE))
        if tool_name is not None:
            name = check_text(tool_name, "tool_name", MAX_TOOL_NAME_LENGTH)
            query = query.where(TOOL_USAGE.c.tool_name == name)
        if since is not None:
            if not isinstance(since, datetime) or since.tzinfo is None:
                raise InvalidInputError("since must be a timezone-aware datetime")
            query = query.where(TOOL_USAGE.c.created_at >= since)
        row = await self._one(query)
        return int(row[0]) if row is not None else 0
