"""Tools of every permission group, registered beside the built-in ones for the scenarios.

The built-in tools are all ``basic`` except ``system.stats`` (``system_management``), so
the scenarios about plans and roles add one real tool per remaining group. Each works on
the caller's own data through the scope the engine opened for it, like the built-ins:

* ``analytics.note_count`` (``analytics``, pro and up) - counts the caller's notes;
* ``data.import_note`` (``data_management``, pro and up) - stores a note (a write, so a
  denied call can be shown to change nothing);
* ``optimize.suggest`` (``advanced_optimization``, enterprise and up) - a fixed advice;
* ``dev.echo`` (``developer_tools``, developers only) - echoes its text;
* ``limited.echo`` (``basic``) - echoes its text, at most :data:`LIMITED_PER_MINUTE` calls
  per user and minute.

:func:`groupless_tool` and :func:`unknown_group_tool` build tools the registry must
refuse (no permission group, or a group no plan grants).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dispatch.engine.api import PermissionGroup, ToolAnnotations
from dispatch.engine.rate_limits import RateLimitPolicy
from dispatch.engine.registry import Tool, ToolInput, ToolInvocation, define_tool

__all__ = [
    "ANALYTICS_TOOL",
    "DATA_TOOL",
    "DEVELOPER_TOOL",
    "GROUP_OF",
    "LIMITED_PER_MINUTE",
    "LIMITED_TOOL",
    "OPTIMIZATION_TOOL",
    "groupless_tool",
    "plan_tools",
    "unknown_group_tool",
]

ANALYTICS_TOOL = "analytics.note_count"
DATA_TOOL = "data.import_note"
OPTIMIZATION_TOOL = "optimize.suggest"
DEVELOPER_TOOL = "dev.echo"
LIMITED_TOOL = "limited.echo"
#: Calls of ``limited.echo`` one user may make per minute.
LIMITED_PER_MINUTE = 3

#: The permission group of every tool a scenario deployment has (built-ins included).
GROUP_OF: dict[str, PermissionGroup] = {
    "calculator": PermissionGroup.BASIC,
    "notes.add": PermissionGroup.BASIC,
    "notes.delete": PermissionGroup.BASIC,
    "notes.search": PermissionGroup.BASIC,
    "runs.list": PermissionGroup.BASIC,
    "threads.list": PermissionGroup.BASIC,
    "time.now": PermissionGroup.BASIC,
    "system.stats": PermissionGroup.SYSTEM_MANAGEMENT,
    ANALYTICS_TOOL: PermissionGroup.ANALYTICS,
    DATA_TOOL: PermissionGroup.DATA_MANAGEMENT,
    OPTIMIZATION_TOOL: PermissionGroup.ADVANCED_OPTIMIZATION,
    DEVELOPER_TOOL: PermissionGroup.DEVELOPER_TOOLS,
    LIMITED_TOOL: PermissionGroup.BASIC,
}


class NoInput(ToolInput):
    """No arguments."""


class TextInput(ToolInput):
    text: str = Field(min_length=1, max_length=200)


class NoteCount(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    notes: int


class Echo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    echo: str


class Imported(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    note_id: str


async def _count_notes(invocation: ToolInvocation, args: NoInput) -> NoteCount:
    return NoteCount(notes=len(await invocation.data.notes.list(limit=200)))


async def _import_note(invocation: ToolInvocation, args: TextInput) -> Imported:
    note = await invocation.data.notes.add(args.text, title="imported")
    return Imported(note_id=note.id)


async def _suggest(invocation: ToolInvocation, args: NoInput) -> Echo:
    return Echo(echo="batch your writes")


async def _echo(invocation: ToolInvocation, args: TextInput) -> Echo:
    return Echo(echo=args.text)


_READ_ONLY = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)


def plan_tools() -> list[Tool[Any]]:
    """Fresh instances of the tools above (one registry each)."""
    return [
        define_tool(
            name=ANALYTICS_TOOL,
            title="Count notes",
            description="Counts your notes.",
            group=PermissionGroup.ANALYTICS,
            input_model=NoInput,
            output_model=NoteCount,
            handler=_count_notes,
            annotations=_READ_ONLY,
        ),
        define_tool(
            name=DATA_TOOL,
            title="Import a note",
            description="Stores the given text as one of your notes.",
            group=PermissionGroup.DATA_MANAGEMENT,
            input_model=TextInput,
            output_model=Imported,
            handler=_import_note,
        ),
        define_tool(
            name=OPTIMIZATION_TOOL,
            title="Suggest an optimisation",
            description="Gives one optimisation advice.",
            group=PermissionGroup.ADVANCED_OPTIMIZATION,
            input_model=NoInput,
            output_model=Echo,
            handler=_suggest,
            annotations=_READ_ONLY,
        ),
        define_tool(
            name=DEVELOPER_TOOL,
            title="Echo for developers",
            description="Echoes the given text.",
            group=PermissionGroup.DEVELOPER_TOOLS,
            input_model=TextInput,
            output_model=Echo,
            handler=_echo,
            annotations=_READ_ONLY,
        ),
        define_tool(
            name=LIMITED_TOOL,
            title="Rate-limited echo",
            description="Echoes the given text; a few calls per minute only.",
            group=PermissionGroup.BASIC,
            input_model=TextInput,
            output_model=Echo,
            handler=_echo,
            annotations=_READ_ONLY,
            rate_limit=RateLimitPolicy(per_minute=LIMITED_PER_MINUTE),
        ),
    ]


def groupless_tool() -> Tool[TextInput]:
    """A tool that declares no permission group (the registry refuses it)."""
    return define_tool(
        name="ungrouped.echo",
        title="Echo without a group",
        description="Echoes the given text.",
        group=None,
        input_model=TextInput,
        handler=_echo,
    )


def unknown_group_tool() -> Tool[TextInput]:
    """A tool whose group no plan or role grants (the registry refuses it)."""
    return define_tool(
        name="mystery.echo",
        title="Echo in an unknown group",
        description="Echoes the given text.",
        group="superuser_tools",
        input_model=TextInput,
        handler=_echo,
    )
