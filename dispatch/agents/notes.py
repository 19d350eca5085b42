"""The ``notes`` agent: works on the user's notes by fixed rules, through the note tools.

Deterministic and offline (it asks no model). The message is split into clauses (lines
and ``;``-separated parts); each clause is one step:

* ``add <text>`` / ``remember [that] <text>`` / ``note: <text>`` → ``notes.add``
  (``#words`` in the text become tags);
* ``search [notes] [for] <words>`` / ``find <words>`` / ``recall <words>`` →
  ``notes.search``;
* ``delete [note] <note id>`` / ``forget [note] <note id>`` → ``notes.delete``;
* anything else is reported as not understood (no tool is called).

Every step emits ``agent_thinking`` (what the clause was read as) and ``progress_update``;
tool calls emit their own events through the dispatcher. The answer has one line per
clause. Tool failures (an unknown note ID, an invalid note) are reported in the answer;
they do not fail the run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import JsonValue

from data.api import MAX_TAG_LENGTH, MAX_TAGS
from dispatch.agents.api import AgentResult
from dispatch.agents.base import AgentDependencies, AgentType, BaseAgent
from dispatch.engine.api import ToolExecutionResult
from dispatch.tools.api import ToolDispatcher
from dispatch.tools.sanitize import shorten

__all__ = ["NOTES_AGENT", "NoteCommand", "NotesAgent", "parse_note_commands"]

_CLAUSES = re.compile(r"[\n;]+")
_TAG = re.compile(r"#([\w\-]+)")
_ADD = re.compile(
    r"^(?:please\s+)?(?:add|remember|note|save)(?:\s+(?:a\s+)?note\b)?(?:\s+that\b)?"
    r"\s*[:,\-]?\s+(?P<text>\S.*)$",
    re.IGNORECASE | re.DOTALL,
)
_SEARCH = re.compile(
    r"^(?:please\s+)?(?:search|find|recall|look\s*up)(?:\s+(?:my\s+|the\s+)?notes?)?"
    r"(?:\s+(?:for|about|with|on))?\s*[:,\-]?\s+(?P<query>\S.*)$",
    re.IGNORECASE | re.DOTALL,
)
_DELETE = re.compile(
    r"^(?:please\s+)?(?:delete|forget|remove)(?:\s+(?:the\s+)?note\b)?\s*[:#]?\s*"
    r"(?P<note_id>[A-Za-z0-9_:\-]+)\s*[.!]?$",
    re.IGNORECASE,
)
_MAX_SHOWN_NOTES = 5
_SHOWN_CHARS = 80


@dataclass(frozen=True, slots=True)
class NoteCommand:
    """One clause as read: the tool to call (``None``: not understood) and its arguments."""

    clause: str
    tool: str | None
    arguments: dict[str, JsonValue]
    description: str


def _tags(text: str) -> list[JsonValue]:
    tags: list[JsonValue] = []
    for tag in _TAG.findall(text):
        cut = tag[:MAX_TAG_LENGTH]
        if cut not in tags and len(tags) < MAX_TAGS:
            tags.append(cut)
    return tags


def _read_clause(clause: str) -> NoteCommand:
    if (match := _DELETE.match(clause)) is not None:
        note_id = match.group("note_id")
        return NoteCommand(clause, "notes.delete", {"note_id": note_id}, f"delete note {note_id}")
    if (match := _SEARCH.match(clause)) is not None:
        query = match.group("query").strip()
        return NoteCommand(
            clause, "notes.search", {"query": query}, f"search the notes for {query!r}"
        )
    if (match := _ADD.match(clause)) is not None:
        text = match.group("text").strip()
        arguments: dict[str, JsonValue] = {"content": text}
        tags = _tags(text)
        if tags:
            arguments["tags"] = tags
        return NoteCommand(clause, "notes.add", arguments, "add a note")
    return NoteCommand(clause, None, {}, "not understood")


def parse_note_commands(message: str) -> list[NoteCommand]:
    """The commands of a message, one per clause, in order (see the module docstring)."""
    return [_read_clause(part.strip()) for part in _CLAUSES.split(message) if part.strip()]


def _describe_search(result: JsonValue) -> str:
    if not isinstance(result, dict):
        return "found nothing"
    notes = result.get("notes")
    if not isinstance(notes, list) or not notes:
        return "found no notes"
    shown: list[str] = []
    for note in notes[:_MAX_SHOWN_NOTES]:
        if isinstance(note, dict):
            shown.append(f"{note.get('id')}: {shorten(str(note.get('content', '')), _SHOWN_CHARS)}")
    more = f" (and {len(notes) - _MAX_SHOWN_NOTES} more)" if len(notes) > _MAX_SHOWN_NOTES else ""
    return f"found {len(notes)} note(s): " + "; ".join(shown) + more


def _describe_add(result: JsonValue) -> str:
    note_id = result.get("id") if isinstance(result, dict) else None
    return f"added note {note_id}"


def _describe_delete(result: JsonValue) -> str:
    note_id = result.get("note_id") if isinstance(result, dict) else None
    return f"deleted note {note_id}"


_DESCRIBE: dict[str, Callable[[JsonValue], str]] = {
    "notes.add": _describe_add,
    "notes.search": _describe_search,
    "notes.delete": _describe_delete,
}


def _outcome_line(command: NoteCommand, result: ToolExecutionResult) -> str:
    if result.success and command.tool is not None:
        return _DESCRIBE[command.tool](result.result)
    return f"could not {command.description}: {result.error_message or result.status.value}"


_HELP = (
    "I understand: 'add <text>' (with #tags), 'search <words>' and 'delete <note id>', "
    "one per line or separated by ';'."
)


class NotesAgent(BaseAgent):
    """Works on the user's notes by fixed rules; see the module docstring."""

    async def work(self, message: str, dispatcher: ToolDispatcher) -> AgentResult:
        commands = parse_note_commands(message)
        if not commands:
            return AgentResult(answer=_HELP, steps=0, tool_calls=0)
        lines: list[str] = []
        outcomes: list[JsonValue] = []
        tool_calls = 0
        total = len(commands)
        for step, command in enumerate(commands, start=1):
            await self.events.thinking(
                f"Clause {step} of {total}: {command.description}.",
                step=step,
                message=f"Reading clause {step}",
            )
            if command.tool is None:
                lines.append(f"{step}. not understood: {shorten(command.clause, _SHOWN_CHARS)}")
                outcomes.append({"clause": step, "tool": None, "status": "not_understood"})
            else:
                result = await dispatcher.execute_tool(command.tool, command.arguments)
                tool_calls += 1
                lines.append(f"{step}. {_outcome_line(command, result)}")
                outcomes.append(
                    {"clause": step, "tool": command.tool, "status": result.status.value}
                )
            await self.events.progress(
                step * 100.0 / total, f"clause {step} of {total}", message=command.description
            )
        if all(command.tool is None for command in commands):
            lines.append(_HELP)
        return AgentResult(
            answer="\n".join(lines),
            steps=total,
            tool_calls=tool_calls,
            details={"clauses": outcomes},
        )


def _build(deps: AgentDependencies) -> NotesAgent:
    return NotesAgent(deps)


NOTES_AGENT = AgentType(
    name="notes",
    description="Adds, searches and deletes the user's notes by fixed rules (no LLM).",
    build=_build,
)
