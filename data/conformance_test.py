"""The backend conformance suite: every repository's contract, on the selected backend.

Runs unchanged against SQLite and PostgreSQL (``SSOT_TEST_DATA_BACKEND``, see conftest).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from pydantic import JsonValue

from context import UserExecutionContext, new_user_id
from data import (
    AlreadyExistsError,
    InvalidInputError,
    InvalidTransitionError,
    MessageRole,
    NotAUserContextError,
    NotFoundError,
    RunStatus,
    ScopeClosedError,
    SqlDataAccessFactory,
)
from data.api import MAX_CONTENT_LENGTH, MAX_LIST_LIMIT, MAX_TITLE_LENGTH
from data.scope import CloseReason

Factory = SqlDataAccessFactory


def user() -> UserExecutionContext:
    return UserExecutionContext.from_request(new_user_id())


# -- factory contract ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "not_a_context",
    [None, "usr_01jdq3v9x4s7k2m8n6p0r5t1wz", {"user_id": "usr_x"}, object()],
    ids=["none", "user-id-string", "dict", "object"],
)
async def test_create_user_context_refuses_anything_but_a_context(
    factory: Factory, not_a_context: object
) -> None:
    with pytest.raises(NotAUserContextError) as raised:
        factory.create_user_context(cast(UserExecutionContext, not_a_context))
    assert raised.value.grpc_status_name == "INVALID_ARGUMENT"
    assert factory.stats().live_scopes == 0


async def test_scope_belongs_to_the_context_user(
    factory: Factory, alice: UserExecutionContext
) -> None:
    async with factory.create_user_context(alice) as scope:
        assert scope.context is alice
        assert scope.user_id == alice.user_id
        assert not scope.closed
        assert factory.stats().scopes_per_user == {alice.user_id: 1}
    assert scope.close_reason is CloseReason.EXITED
    assert factory.stats().live_scopes == 0


async def test_closed_scope_refuses_every_call(
    factory: Factory, alice: UserExecutionContext
) -> None:
    async with factory.create_user_context(alice) as scope:
        thread = await scope.threads.create(title="t")
    with pytest.raises(ScopeClosedError):
        await scope.threads.get(thread.id)
    with pytest.raises(ScopeClosedError):
        await scope.notes.add("x")
    with pytest.raises(ScopeClosedError):
        await scope.cache.get("k")
    with pytest.raises(ScopeClosedError):
        await scope.commit()


# -- threads --------------------------------------------------------------------------------


async def test_thread_lifecycle(factory: Factory, alice: UserExecutionContext) -> None:
    async with factory.create_user_context(alice) as scope:
        created = await scope.threads.create(title="Plans", metadata={"a": [1, "b", None]})
        assert created.id.startswith("thr_")
        assert await scope.threads.get(created.id) == created
        renamed = await scope.threads.rename(created.id, "Better plans")
        assert renamed.title == "Better plans"
        assert renamed.updated_at >= created.updated_at
    async with factory.create_user_context(alice) as scope:
        assert await scope.threads.get(created.id) == renamed
        await scope.threads.delete(created.id)
        with pytest.raises(NotFoundError):
            await scope.threads.get(created.id)
        with pytest.raises(NotFoundError):
            await scope.threads.delete(created.id)


async def test_thread_with_caller_chosen_id(
    factory: Factory, alice: UserExecutionContext, bob: UserExecutionContext
) -> None:
    async with factory.create_user_context(alice) as scope:
        thread = await scope.threads.create(title="ctx thread", thread_id=alice.thread_id)
        assert thread.id == alice.thread_id
        with pytest.raises(AlreadyExistsError):
            await scope.threads.create(title="again", thread_id=alice.thread_id)
        # The refused write was undone alone: the unit of work goes on.
        assert (await scope.threads.get(alice.thread_id)).title == "ctx thread"
    # IDs are per-user namespaces: bob may use the same ID without learning anything.
    async with factory.create_user_context(bob) as scope:
        theirs = await scope.threads.create(title="bob's", thread_id=alice.thread_id)
        assert theirs.title == "bob's"
    async with factory.create_user_context(alice) as scope:
        assert (await scope.threads.get(alice.thread_id)).title == "ctx thread"


@pytest.mark.parametrize("bad_id", ["", "test", "has space", "x" * 200, "a/b"])
async def test_thread_refuses_bad_caller_ids(
    factory: Factory, alice: UserExecutionContext, bad_id: str
) -> None:
    async with factory.create_user_context(alice) as scope:
        with pytest.raises(InvalidInputError):
            await scope.threads.create(title="t", thread_id=bad_id)
        assert await scope.threads.list() == []


async def test_threads_list_most_recently_updated_first(
    factory: Factory, alice: UserExecutionContext
) -> None:
    async with factory.create_user_context(alice) as scope:
        first = await scope.threads.create(title="first")
        second = await scope.threads.create(title="second")
        assert [t.id for t in await scope.threads.list()] == [second.id, first.id]
        await scope.messages.append(first.id, role=MessageRole.USER, content="bump")
        assert [t.id for t in await scope.threads.list()] == [first.id, second.id]
        assert [t.id for t in await scope.threads.list(limit=1)] == [first.id]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"title": "x" * (MAX_TITLE_LENGTH + 1)}, "title"),
        ({"title": "nul\x00byte"}, "title"),
        ({"title": "lone \ud800 surrogate"}, "title"),
        ({"title": 42}, "title"),
        ({"metadata": {"n": float("nan")}}, "metadata"),
        ({"metadata": {1: "int key"}}, "metadata"),
        ({"metadata": {"s": {1, 2}}}, "metadata"),
        ({"metadata": {"big": "x" * 70_000}}, "metadata"),
        ({"metadata": {"nul": "a\x00b"}}, "metadata"),
        ({"metadata": ["not", "an", "object"]}, "metadata"),
    ],
)
async def test_thread_create_refuses_bad_input(
    factory: Factory, alice: UserExecutionContext, kwargs: dict[str, Any], field: str
) -> None:
    async with factory.create_user_context(alice) as scope:
        with pytest.raises(InvalidInputError) as raised:
            await scope.threads.create(**kwargs)
        assert field in raised.value.message
        assert await scope.threads.list() == []


@pytest.mark.parametrize("limit", [0, -1, MAX_LIST_LIMIT + 1, True, 2.5, "10"])
async def test_list_limits_are_checked(
    factory: Factory, alice: UserExecutionContext, limit: object
) -> None:
    async with factory.create_user_context(alice) as scope:
        with pytest.raises(InvalidInputError):
            await scope.threads.list(limit=cast(int, limit))
        with pytest.raises(InvalidInputError):
            await scope.notes.list(limit=cast(int, limit))


async def test_metadata_round_trips(factory: Factory, alice: UserExecutionContext) -> None:
    metadata: dict[str, JsonValue] = {
        "emoji": "🙂",
        "nested": {"list": [1, 2.5, True, None, "ü"]},
        "empty": {},
    }
    async with factory.create_user_context(alice) as scope:
        thread = await scope.threads.create(title="Ünïcode ✓", metadata=metadata)
    async with factory.create_user_context(alice) as scope:
        stored = await scope.threads.get(thread.id)
    assert stored.metadata == metadata
    assert stored.title == "Ünïcode ✓"
    assert stored.created_at.tzinfo is not None
    assert stored.created_at == thread.created_at


# -- messages -------------------------------------------------------------------------------


async def test_messages_append_and_list_in_order(
    factory: Factory, alice: UserExecutionContext
) -> None:
    async with factory.create_user_context(alice) as scope:
        thread = await scope.threads.create(title="chat")
        sent = [
            await scope.messages.append(thread.id, role=role, content=f"m{i}")
            for i, role in enumerate([MessageRole.USER, MessageRole.ASSISTANT] * 5)
        ]
    async with factory.create_user_context(alice) as scope:
        listed = await scope.messages.list(thread.id)
        assert listed == sent
        latest = await scope.messages.list(thread.id, limit=3)
        assert [m.content for m in latest] == ["m7", "m8", "m9"]
        assert await scope.messages.get(sent[4].id) == sent[4]


async def test_message_refuses_unknown_thread_run_and_bad_role(
    factory: Factory, alice: UserExecutionContext
) -> None:
    async with factory.create_user_context(alice) as scope:
        thread = await scope.threads.create(title="chat")
        with pytest.raises(NotFoundError):
            await scope.messages.append("thr_nope", role=MessageRole.USER, content="x")
        with pytest.raises(NotFoundError):
            await scope.messages.append(
                thread.id, role=MessageRole.USER, content="x", run_id="run_x"
            )
        with pytest.raises(InvalidInputError):
            await scope.messages.append(thread.id, role=cast(MessageRole, "admin"), content="x")
        with pytest.raises(InvalidInputError):
            await scope.messages.append(
                thread.id, role=MessageRole.USER, content="x" * (MAX_CONTENT_LENGTH + 1)
            )
        with pytest.raises(NotFoundError):
            await scope.messages.list("thr_nope")
        with pytest.raises(NotFoundError):
            await scope.messages.get("msg_nope")
        with pytest.raises(InvalidInputError):
            await scope.messages.get("m" * 500)
        assert await scope.messages.list(thread.id) == []


async def test_message_with_run(factory: Factory, alice: UserExecutionContext) -> None:
    async with factory.create_user_context(alice) as scope:
        thread = await scope.threads.create()
        run = await scope.runs.create(thread_id=thread.id, agent_name="triage")
        message = await scope.messages.append(
            thread.id,
            role=cast(MessageRole, "assistant"),
            content="done",
            run_id=run.id,
            metadata={"k": 1},
        )
        assert message.role is MessageRole.ASSISTANT
        assert (await scope.messages.get(message.id)).run_id == run.id


async def test_deleting_a_thread_deletes_its_messages_runs_and_events(
    factory: Factory, alice: UserExecutionContext
) -> None:
    async with factory.create_user_context(alice) as scope:
        thread = await scope.threads.create()
        message = await scope.messages.append(thread.id, role=MessageRole.USER, content="x")
        run = await scope.runs.create(thread_id=thread.id, agent_name="a")
        await scope.run_events.append(run.id, seq=1, event_type="agent_started")
    async with factory.create_user_context(alice) as scope:
        await scope.threads.delete(thread.id)
        with pytest.raises(NotFoundError):
            await scope.messages.get(message.id)
        with pytest.raises(NotFoundError):
            await scope.runs.get(run.id)
        with pytest.raises(NotFoundError):
            await scope.run_events.list(run.id)
        rows = await scope.execute_sql(
            "SELECT count(*) AS n FROM run_events WHERE user_id = :u", {"u": alice.user_id}
        )
        assert rows.rows[0]["n"] == 0


# -- notes ----------------------------------------------------------------------------------


async def test_notes_add_get_list_delete(factory: Factory, alice: UserExecutionContext) -> None:
    async with factory.create_user_context(alice) as scope:
        first = await scope.notes.add("Buy milk", title="Shopping", tags=["home", "home", " todo "])
        assert first.tags == ("home", "todo")
        second = await scope.notes.add("Call Bob")
    async with factory.create_user_context(alice) as scope:
        assert await scope.notes.get(first.id) == first
        assert [n.id for n in await scope.notes.list()] == [second.id, first.id]
        await scope.notes.delete(first.id)
        with pytest.raises(NotFoundError):
            await scope.notes.get(first.id)
        with pytest.raises(NotFoundError):
            await scope.notes.delete(first.id)
        assert [n.id for n in await scope.notes.list()] == [second.id]


async def test_notes_search(factory: Factory, alice: UserExecutionContext) -> None:
    async with factory.create_user_context(alice) as scope:
        milk = await scope.notes.add("Buy MILK and bread", title="Shopping")
        street = await scope.notes.add("Meet at the Hauptstraße")
        tagged = await scope.notes.add("Quarterly numbers", tags=["Finance"])
        percent = await scope.notes.add("Discount of 50% today")
        under = await scope.notes.add("snake_case names")

        async def ids(query: str) -> list[str]:
            return [n.id for n in await scope.notes.search(query)]

        assert await ids("milk") == [milk.id]
        assert await ids("bread milk") == [milk.id]  # every word must match
        assert await ids("milk cheese") == []
        assert await ids("shopping") == [milk.id]  # titles are searched
        assert await ids("finance") == [tagged.id]  # and tags
        assert await ids("HAUPTSTRASSE") == [street.id]  # Unicode case folding: ß ~ ss
        assert await ids("50%") == [percent.id]  # LIKE wildcards are literal
        assert await ids("e_c") == [under.id]
        assert await ids("%") == [percent.id]
        with pytest.raises(InvalidInputError):
            await scope.notes.search("   ")
        with pytest.raises(InvalidInputError):
            await scope.notes.search(" ".join(f"w{i}" for i in range(11)))


async def test_notes_refuse_bad_input(factory: Factory, alice: UserExecutionContext) -> None:
    async with factory.create_user_context(alice) as scope:
        with pytest.raises(InvalidInputError):
            await scope.notes.add("")
        with pytest.raises(InvalidInputError):
            await scope.notes.add("x", tags=["t"] * 0 + [f"t{i}" for i in range(21)])
        with pytest.raises(InvalidInputError):
            await scope.notes.add("x", tags=cast(list[str], "not-a-list"))
        with pytest.raises(InvalidInputError):
            await scope.notes.add("x", tags=["ok", ""])
        assert await scope.notes.list() == []


# -- runs and run events --------------------------------------------------------------------


async def test_run_lifecycle_and_timings(factory: Factory, alice: UserExecutionContext) -> None:
    async with factory.create_user_context(alice) as scope:
        thread = await scope.threads.create()
        run = await scope.runs.create(thread_id=thread.id, agent_name="triage", run_id=alice.run_id)
        assert run.id == alice.run_id
        assert run.status is RunStatus.PENDING
        assert run.duration_ms is None
        started = await scope.runs.start(run.id)
        assert started.status is RunStatus.RUNNING
        assert started.started_at is not None
        finished = await scope.runs.finish(run.id, RunStatus.COMPLETED, result="42")
        assert finished.status is RunStatus.COMPLETED
        assert finished.finished_at is not None
        assert finished.duration_ms is not None
        assert finished.duration_ms >= 0
        assert finished.result == "42"
    async with factory.create_user_context(alice) as scope:
        assert await scope.runs.get(run.id) == finished


async def test_run_transitions_are_enforced(factory: Factory, alice: UserExecutionContext) -> None:
    async with factory.create_user_context(alice) as scope:
        thread = await scope.threads.create()
        run = await scope.runs.create(thread_id=thread.id, agent_name="a")
        with pytest.raises(InvalidInputError):
            await scope.runs.finish(run.id, RunStatus.RUNNING)
        cancelled = await scope.runs.finish(run.id, RunStatus.CANCELLED, error="user cancelled")
        assert cancelled.error == "user cancelled"
        with pytest.raises(InvalidTransitionError):
            await scope.runs.start(run.id)
        with pytest.raises(InvalidTransitionError):
            await scope.runs.finish(run.id, RunStatus.COMPLETED)
        assert (await scope.runs.get(run.id)).status is RunStatus.CANCELLED
        with pytest.raises(NotFoundError):
            await scope.runs.start("run_unknown")


async def test_runs_list_and_refusals(factory: Factory, alice: UserExecutionContext) -> None:
    async with factory.create_user_context(alice) as scope:
        one = await scope.threads.create()
        two = await scope.threads.create()
        a = await scope.runs.create(thread_id=one.id, agent_name="a")
        b = await scope.runs.create(thread_id=two.id, agent_name="b")
        assert [r.id for r in await scope.runs.list()] == [b.id, a.id]
        assert [r.id for r in await scope.runs.list(thread_id=one.id)] == [a.id]
        with pytest.raises(NotFoundError):
            await scope.runs.create(thread_id="thr_unknown", agent_name="a")
        with pytest.raises(AlreadyExistsError):
            await scope.runs.create(thread_id=one.id, agent_name="a", run_id=a.id)
        with pytest.raises(InvalidInputError):
            await scope.runs.create(thread_id=one.id, agent_name="")
        with pytest.raises(NotFoundError):
            await scope.runs.list(thread_id="thr_unknown")


async def test_run_events_append_and_replay(factory: Factory, alice: UserExecutionContext) -> None:
    async with factory.create_user_context(alice) as scope:
        thread = await scope.threads.create()
        run = await scope.runs.create(thread_id=thread.id, agent_name="a")
        for seq in range(1, 6):
            await scope.run_events.append(
                run.id, seq=seq, event_type="agent_thinking", payload={"step": seq}
            )
        with pytest.raises(AlreadyExistsError):
            await scope.run_events.append(run.id, seq=3, event_type="agent_thinking")
        with pytest.raises(InvalidInputError):
            await scope.run_events.append(run.id, seq=0, event_type="x")
        with pytest.raises(NotFoundError):
            await scope.run_events.append("run_unknown", seq=1, event_type="x")
    async with factory.create_user_context(alice) as scope:
        events = await scope.run_events.list(run.id)
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]
        assert events[2].payload == {"step": 3}
        assert [e.seq for e in await scope.run_events.list(run.id, after_seq=3)] == [4, 5]
        assert [e.seq for e in await scope.run_events.list(run.id, after_seq=1, limit=2)] == [2, 3]


# -- tool usage -----------------------------------------------------------------------------


async def test_tool_usage_record_list_count(factory: Factory, alice: UserExecutionContext) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    async with factory.create_user_context(alice) as scope:
        first = await scope.tool_usage.record(tool_name="search", success=True, duration_ms=12.5)
        await scope.tool_usage.record(
            tool_name="search", success=False, duration_ms=3, error_code="TIMEOUT", run_id="run_a"
        )
        await scope.tool_usage.record(tool_name="calc", success=True, duration_ms=0)
        with pytest.raises(InvalidInputError):
            await scope.tool_usage.record(tool_name="x", success=True, duration_ms=-1)
        with pytest.raises(InvalidInputError):
            await scope.tool_usage.record(tool_name="x", success=True, duration_ms=float("inf"))
        with pytest.raises(InvalidInputError):
            await scope.tool_usage.record(tool_name="", success=True, duration_ms=1)
    async with factory.create_user_context(alice) as scope:
        assert await scope.tool_usage.count() == 3
        assert await scope.tool_usage.count(tool_name="search") == 2
        assert await scope.tool_usage.count(since=before) == 3
        assert await scope.tool_usage.count(since=datetime.now(UTC) + timedelta(hours=1)) == 0
        assert [u.error_code for u in await scope.tool_usage.list(run_id="run_a")] == ["TIMEOUT"]
        searches = await scope.tool_usage.list(tool_name="search")
        assert [u.id for u in searches][-1] == first.id
        assert first in searches


# -- transactions ---------------------------------------------------------------------------


class BoomError(Exception):
    pass


async def test_exception_inside_scope_rolls_back_everything(
    factory: Factory, alice: UserExecutionContext
) -> None:
    async with factory.create_user_context(alice) as scope:
        kept = await scope.threads.create(title="kept")
    with pytest.raises(BoomError):
        async with factory.create_user_context(alice) as scope:
            thread = await scope.threads.create(title="doomed")
            await scope.messages.append(thread.id, role=MessageRole.USER, content="doomed")
            await scope.messages.append(kept.id, role=MessageRole.USER, content="doomed")
            run = await scope.runs.create(thread_id=kept.id, agent_name="a")
            await scope.run_events.append(run.id, seq=1, event_type="agent_started")
            await scope.notes.add("doomed note")
            await scope.tool_usage.record(tool_name="t", success=True, duration_ms=1)
            await scope.threads.rename(kept.id, "renamed")
            raise BoomError
    async with factory.create_user_context(alice) as scope:
        assert [t.title for t in await scope.threads.list()] == ["kept"]
        assert await scope.messages.list(kept.id) == []
        assert await scope.runs.list() == []
        assert await scope.notes.list() == []
        assert await scope.tool_usage.count() == 0


async def test_commit_checkpoint_survives_a_later_failure(
    factory: Factory, alice: UserExecutionContext
) -> None:
    with pytest.raises(BoomError):
        async with factory.create_user_context(alice) as scope:
            await scope.notes.add("checkpointed")
            await scope.commit()
            assert not scope.holds_connection
            await scope.notes.add("lost")
            raise BoomError
    async with factory.create_user_context(alice) as scope:
        assert [n.content for n in await scope.notes.list()] == ["checkpointed"]


async def test_rollback_discards_and_scope_goes_on(
    factory: Factory, alice: UserExecutionContext
) -> None:
    async with factory.create_user_context(alice) as scope:
        await scope.notes.add("discarded")
        await scope.rollback()
        await scope.notes.add("kept")
    async with factory.create_user_context(alice) as scope:
        assert [n.content for n in await scope.notes.list()] == ["kept"]


async def test_uncommitted_writes_are_invisible_to_other_scopes(
    factory: Factory, alice: UserExecutionContext
) -> None:
    async with factory.create_user_context(alice) as writer:
        note = await writer.notes.add("pending")
        async with factory.create_user_context(alice) as reader:
            with pytest.raises(NotFoundError):
                await reader.notes.get(note.id)
    async with factory.create_user_context(alice) as reader:
        assert (await reader.notes.get(note.id)).content == "pending"


async def test_concurrent_writers_of_one_user_both_commit(
    factory: Factory, alice: UserExecutionContext
) -> None:
    async def write(label: str) -> None:
        async with factory.create_user_context(alice) as scope:
            for i in range(5):
                await scope.notes.add(f"{label}-{i}")
                await asyncio.sleep(0)

    await asyncio.gather(write("a"), write("b"), write("c"))
    async with factory.create_user_context(alice) as scope:
        contents = sorted(n.content for n in await scope.notes.list())
    assert contents == sorted(f"{label}-{i}" for label in "abc" for i in range(5))
