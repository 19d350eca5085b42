"""The notes agent: its fixed reading of clauses, and runs that act on the user's notes
through the note tools only."""

from __future__ import annotations

from dispatch.agents.api import RunState
from dispatch.agents.notes import parse_note_commands
from dispatch.agents.testing import AgentDeployment
from dispatch.engine.testing import make_caller
from dispatch.tools.api import EventType


def test_clauses_are_read_by_fixed_rules() -> None:
    commands = parse_note_commands(
        "add buy milk #home #errand #home\n"
        "Remember that the door code is 4321; note: call mum\n"
        "search notes for milk; find door; recall mum\n"
        "delete note note_01abc; forget note_02def\n"
        "sing a song"
    )
    assert [(c.tool, c.arguments) for c in commands] == [
        ("notes.add", {"content": "buy milk #home #errand #home", "tags": ["home", "errand"]}),
        ("notes.add", {"content": "the door code is 4321"}),
        ("notes.add", {"content": "call mum"}),
        ("notes.search", {"query": "milk"}),
        ("notes.search", {"query": "door"}),
        ("notes.search", {"query": "mum"}),
        ("notes.delete", {"note_id": "note_01abc"}),
        ("notes.delete", {"note_id": "note_02def"}),
        (None, {}),
    ]
    assert parse_note_commands(" ;\n ; ") == []


async def test_notes_run_adds_searches_and_deletes_the_users_notes(
    deployment: AgentDeployment,
) -> None:
    caller, other = make_caller(), make_caller()
    runner = deployment.runner
    seed = await runner.start_run(other, "notes", "add milk belongs to someone else")
    await runner.wait_run(other, seed.run_id)

    first = await runner.start_run(caller, "notes", "add buy milk #home; add walk the dog")
    info = await runner.wait_run(caller, first.run_id)
    assert info.state is RunState.COMPLETED
    async with deployment.data.create_user_context(caller.context) as scope:
        notes = {note.content: note for note in await scope.notes.list()}
    assert set(notes) == {"buy milk #home", "walk the dog"}
    assert notes["buy milk #home"].tags == ("home",)
    milk_id = notes["buy milk #home"].id

    second = await runner.start_run(
        caller, "notes", f"search milk\ndelete note {milk_id}\ndelete note note_missing\nhum"
    )
    info = await runner.wait_run(caller, second.run_id)
    assert info.state is RunState.COMPLETED
    assert info.result is not None
    lines = info.result.splitlines()
    assert lines[0].startswith("1. found 1 note(s)") and "buy milk" in lines[0]
    assert "someone else" not in info.result
    assert lines[1] == f"2. deleted note {milk_id}"
    assert lines[2].startswith("3. could not delete note note_missing")
    assert lines[3] == "4. not understood: hum"

    events = deployment.sinks.for_run(caller.user_id, second.run_id).events
    kinds = [event.type for event in events]
    assert kinds.count(EventType.AGENT_THINKING) == 4
    assert kinds.count(EventType.PROGRESS_UPDATE) == 4
    assert kinds.count(EventType.TOOL_EXECUTING) == kinds.count(EventType.TOOL_COMPLETED) == 3
    progress = [
        e.payload["progress_percentage"] for e in events if e.type is EventType.PROGRESS_UPDATE
    ]
    assert progress == [25.0, 50.0, 75.0, 100.0]
    async with deployment.data.create_user_context(caller.context) as scope:
        assert [note.content for note in await scope.notes.list()] == ["walk the dog"]
    async with deployment.data.create_user_context(other.context) as scope:
        assert [note.content for note in await scope.notes.list()] == [
            "milk belongs to someone else"
        ]
    assert deployment.leftovers() == {"runs": 0, "dispatchers": 0, "scopes": 0}


async def test_a_message_with_nothing_understood_gets_help(deployment: AgentDeployment) -> None:
    caller = make_caller()
    handle = await deployment.runner.start_run(caller, "notes", "hello there")
    info = await deployment.runner.wait_run(caller, handle.run_id)
    assert info.state is RunState.COMPLETED
    assert info.result is not None and "I understand" in info.result
