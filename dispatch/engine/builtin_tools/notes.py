"""``notes.add``, ``notes.search``, ``notes.delete``: the caller's own notes.

Every call goes through the data scope the engine opened for the caller's context, so a
note ID of another user is indistinguishable from one that does not exist.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from context.errors import describe_value
from data.api import (
    MAX_LOOKUP_ID_LENGTH,
    MAX_NOTE_LENGTH,
    MAX_SEARCH_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_TITLE_LENGTH,
    InvalidInputError,
    NotFoundError,
)
from dispatch.engine.api import PermissionGroup, ToolAnnotations, ToolFailure, ToolInputRejected
from dispatch.engine.builtin_tools.views import NoteView
from dispatch.engine.registry import Tool, ToolInput, ToolInvocation, define_tool

__all__ = [
    "AddNoteInput",
    "DeleteNoteInput",
    "DeleteNoteOutput",
    "NoteList",
    "SearchNotesInput",
    "notes_add_tool",
    "notes_delete_tool",
    "notes_search_tool",
]

MAX_SEARCH_RESULTS = 100

Tag = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TAG_LENGTH)]


class AddNoteInput(ToolInput):
    content: str = Field(min_length=1, max_length=MAX_NOTE_LENGTH, description="The note text")
    title: str = Field(default="", max_length=MAX_TITLE_LENGTH, description="A short title")
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS, description="Labels")


class SearchNotesInput(ToolInput):
    query: str = Field(
        min_length=1,
        max_length=MAX_SEARCH_LENGTH,
        description="Words that must all occur in the note's title, content or tags",
    )
    limit: int = Field(default=20, ge=1, le=MAX_SEARCH_RESULTS)


class DeleteNoteInput(ToolInput):
    note_id: str = Field(min_length=1, max_length=MAX_LOOKUP_ID_LENGTH)


class NoteList(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int
    notes: list[NoteView]


class DeleteNoteOutput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    deleted: bool
    note_id: str


async def _add(invocation: ToolInvocation, args: AddNoteInput) -> NoteView:
    try:
        note = await invocation.data.notes.add(args.content, title=args.title, tags=args.tags)
    except InvalidInputError as exc:
        raise ToolInputRejected("INVALID_NOTE", exc.message) from None
    return NoteView.of(note)


async def _search(invocation: ToolInvocation, args: SearchNotesInput) -> NoteList:
    try:
        notes = await invocation.data.notes.search(args.query, limit=args.limit)
    except InvalidInputError as exc:
        raise ToolInputRejected("INVALID_QUERY", exc.message) from None
    return NoteList(count=len(notes), notes=[NoteView.of(note) for note in notes])


async def _delete(invocation: ToolInvocation, args: DeleteNoteInput) -> DeleteNoteOutput:
    try:
        await invocation.data.notes.delete(args.note_id)
    except (NotFoundError, InvalidInputError):
        raise ToolFailure(
            "NOTE_NOT_FOUND", f"you have no note with id {describe_value(args.note_id)}"
        ) from None
    return DeleteNoteOutput(deleted=True, note_id=args.note_id)


def notes_add_tool() -> Tool[AddNoteInput]:
    return define_tool(
        name="notes.add",
        title="Add a note",
        description="Stores a note (text, optional title and tags) in your memory.",
        group=PermissionGroup.BASIC,
        input_model=AddNoteInput,
        output_model=NoteView,
        handler=_add,
        annotations=ToolAnnotations(
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=False,
        ),
    )


def notes_search_tool() -> Tool[SearchNotesInput]:
    return define_tool(
        name="notes.search",
        title="Search notes",
        description=(
            "Finds your notes whose title, content or tags contain every word of the query "
            "(case-insensitive), newest first."
        ),
        group=PermissionGroup.BASIC,
        input_model=SearchNotesInput,
        output_model=NoteList,
        handler=_search,
        annotations=ToolAnnotations(
            read_only_hint=True,
            destructive_hint=False,
            idempotent_hint=True,
            open_world_hint=False,
        ),
    )


def notes_delete_tool() -> Tool[DeleteNoteInput]:
    return define_tool(
        name="notes.delete",
        title="Delete a note",
        description="Deletes one of your notes by its id.",
        group=PermissionGroup.BASIC,
        input_model=DeleteNoteInput,
        output_model=DeleteNoteOutput,
        handler=_delete,
        annotations=ToolAnnotations(
            read_only_hint=False,
            destructive_hint=True,
            idempotent_hint=True,
            open_world_hint=False,
        ),
    )
