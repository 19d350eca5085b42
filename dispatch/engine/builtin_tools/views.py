"""JSON views of the caller's own stored objects, as the built-in tools return them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from data.api import Note, Run, Thread

__all__ = ["NoteView", "RunView", "ThreadView"]

_VIEW = ConfigDict(frozen=True, extra="forbid")


class NoteView(BaseModel):
    model_config = _VIEW

    id: str
    title: str
    content: str
    tags: list[str]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, note: Note) -> NoteView:
        return cls(
            id=note.id,
            title=note.title,
            content=note.content,
            tags=list(note.tags),
            created_at=note.created_at,
            updated_at=note.updated_at,
        )


class ThreadView(BaseModel):
    model_config = _VIEW

    id: str
    title: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, thread: Thread) -> ThreadView:
        return cls(
            id=thread.id,
            title=thread.title,
            created_at=thread.created_at,
            updated_at=thread.updated_at,
        )


class RunView(BaseModel):
    model_config = _VIEW

    id: str
    thread_id: str
    agent_name: str
    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None

    @classmethod
    def of(cls, run: Run) -> RunView:
        return cls(
            id=run.id,
            thread_id=run.thread_id,
            agent_name=run.agent_name,
            status=run.status.value,
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            duration_ms=run.duration_ms,
        )
