"""The built-in data tools touch only the caller's own data, also under concurrency."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from auth.api import Plan
from data.api import RunStatus
from data.factory import SqlDataAccessFactory
from dispatch.engine.api import ToolCaller, ToolExecutionResult, ToolStatus
from dispatch.engine.engine import LocalToolExecutionEngine
from dispatch.engine.testing import make_caller


def _ok(result: ToolExecutionResult) -> dict[str, Any]:
    assert result.status is ToolStatus.SUCCESS, (result.error_code, result.error_message)
    assert isinstance(result.result, dict)
    return cast(dict[str, Any], result.result)


async def _add(engine: LocalToolExecutionEngine, caller: ToolCaller, content: str) -> str:
    note = _ok(await engine.execute_tool(caller, "notes.add", {"content": content}))
    note_id = note["id"]
    assert isinstance(note_id, str)
    return note_id


async def _search(engine: LocalToolExecutionEngine, caller: ToolCaller, query: str) -> set[str]:
    found = _ok(await engine.execute_tool(caller, "notes.search", {"query": query, "limit": 100}))
    notes = found["notes"]
    assert isinstance(notes, list)
    assert found["count"] == len(notes)
    return {note["id"] for note in notes}


async def test_notes_add_and_search_round_trip(engine: LocalToolExecutionEngine) -> None:
    caller = make_caller()
    added = _ok(
        await engine.execute_tool(
            caller,
            "notes.add",
            {"content": "Buy oat milk", "title": "Shopping", "tags": ["errands"]},
        )
    )
    assert (added["title"], added["content"], added["tags"]) == (
        "Shopping",
        "Buy oat milk",
        ["errands"],
    )
    assert await _search(engine, caller, "OAT milk") == {added["id"]}
    assert await _search(engine, caller, "errands") == {added["id"]}
    assert await _search(engine, caller, "coffee") == set()


async def test_two_concurrent_users_each_touch_only_their_own_notes(
    engine: LocalToolExecutionEngine,
) -> None:
    alice, bob = make_caller(), make_caller(Plan.PRO)

    async def work(caller: ToolCaller, who: str) -> set[str]:
        ids = set()
        for i in range(8):
            ids.add(await _add(engine, caller, f"shared-word secret of {who} number {i}"))
            await asyncio.sleep(0)  # let the other user's calls interleave
        return ids

    alice_ids, bob_ids = await asyncio.gather(work(alice, "alice"), work(bob, "bob"))
    assert len(alice_ids) == len(bob_ids) == 8

    alice_found, bob_found = await asyncio.gather(
        _search(engine, alice, "shared-word secret"), _search(engine, bob, "shared-word secret")
    )
    assert alice_found == alice_ids
    assert bob_found == bob_ids
    # Even searching for the other user's words finds nothing of theirs.
    assert await _search(engine, alice, "bob") == set()


async def test_deleting_another_users_note_is_not_found_and_deletes_nothing(
    engine: LocalToolExecutionEngine,
) -> None:
    alice, bob = make_caller(), make_caller()
    note_id = await _add(engine, alice, "alice private diary")
    result = await engine.execute_tool(bob, "notes.delete", {"note_id": note_id})
    assert result.status is ToolStatus.ERROR
    assert result.error_code == "NOTE_NOT_FOUND"
    assert "diary" not in (result.error_message or "")
    assert await _search(engine, alice, "diary") == {note_id}
    unknown = await engine.execute_tool(bob, "notes.delete", {"note_id": "note_missing"})
    assert unknown.error_code == result.error_code
    assert (result.error_message or "").replace(note_id, "note_missing") == unknown.error_message


async def test_owner_deletes_own_note(engine: LocalToolExecutionEngine) -> None:
    alice = make_caller()
    note_id = await _add(engine, alice, "temporary")
    deleted = _ok(await engine.execute_tool(alice, "notes.delete", {"note_id": note_id}))
    assert deleted == {"deleted": True, "note_id": note_id}
    assert await _search(engine, alice, "temporary") == set()
    again = await engine.execute_tool(alice, "notes.delete", {"note_id": note_id})
    assert again.error_code == "NOTE_NOT_FOUND"


async def test_threads_and_runs_list_only_the_callers_own(
    engine: LocalToolExecutionEngine, data_factory: SqlDataAccessFactory
) -> None:
    alice, bob = make_caller(), make_caller()
    for caller, title in ((alice, "alice thread"), (bob, "bob thread")):
        async with data_factory.create_user_context(caller.context) as scope:
            thread = await scope.threads.create(title=title, thread_id=caller.context.thread_id)
            run = await scope.runs.create(
                thread_id=thread.id, agent_name="assistant", run_id=caller.context.run_id
            )
            await scope.runs.start(run.id)
            await scope.runs.finish(run.id, RunStatus.COMPLETED, result="done")

    threads = _ok(await engine.execute_tool(alice, "threads.list", {}))
    assert threads["count"] == 1
    assert isinstance(threads["threads"], list)
    assert [t["title"] for t in threads["threads"]] == ["alice thread"]

    runs = _ok(await engine.execute_tool(alice, "runs.list", {}))
    assert isinstance(runs["runs"], list)
    assert [(r["id"], r["status"]) for r in runs["runs"]] == [(alice.context.run_id, "completed")]
    assert runs["runs"][0]["duration_ms"] is not None

    own = _ok(await engine.execute_tool(alice, "runs.list", {"thread_id": alice.context.thread_id}))
    assert own["count"] == 1
    other = await engine.execute_tool(alice, "runs.list", {"thread_id": bob.context.thread_id})
    # Another user's thread is reported exactly like a thread that does not exist.
    assert other.status is ToolStatus.ERROR
    assert other.error_code == "THREAD_NOT_FOUND"
    missing = await engine.execute_tool(alice, "runs.list", {"thread_id": "thr_missing"})
    assert missing.error_code == "THREAD_NOT_FOUND"
    assert (other.error_message or "").replace(bob.context.thread_id, "thr_missing") == (
        missing.error_message
    )


async def test_time_now_in_utc(engine: LocalToolExecutionEngine) -> None:
    before = datetime.now(UTC)
    now = _ok(await engine.execute_tool(make_caller(), "time.now", {}))
    after = datetime.now(UTC)
    utc = now["utc"]
    assert isinstance(utc, str)
    moment = datetime.fromisoformat(utc)
    assert moment.utcoffset() == timedelta(0)
    assert before <= moment <= after
    assert (now["timezone"], now["utc_offset"]) == ("UTC", "+00:00")


async def test_time_now_in_an_iana_zone(engine: LocalToolExecutionEngine) -> None:
    now = _ok(await engine.execute_tool(make_caller(), "time.now", {"timezone": "Asia/Kolkata"}))
    local = now["local"]
    assert isinstance(local, str)
    assert now["utc_offset"] == "+05:30"
    assert datetime.fromisoformat(local).utcoffset() == timedelta(hours=5, minutes=30)
    assert isinstance(now["utc"], str)
    assert datetime.fromisoformat(local) == datetime.fromisoformat(now["utc"])


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus_Mons", "../../etc/passwd", "/etc/localtime", "Europe/../../x", "a" * 65]
)
async def test_time_now_refuses_unknown_or_hostile_zones(
    engine: LocalToolExecutionEngine, zone: str
) -> None:
    result = await engine.execute_tool(make_caller(), "time.now", {"timezone": zone})
    assert result.status is ToolStatus.INVALID_INPUT
