"""Tool dispatcher + execution engine: exactly-once tool events, per-user results and records.

Every scenario runs in process (the platform's dispatcher factory over its engine) and over
gRPC (a dispatcher factory in the client whose engine is the served ToolService, reached
with the user's own token). Each user's tool events go to a sink bound to that user's
request context; the deployment has one extra tool per permission group (``plan_tools``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from auth.api import Plan
from dispatch.engine.api import ToolExecutionResult, ToolStatus
from dispatch.tools.api import DispatcherMetrics, EventType, RunEventEnvelope
from dispatch.tools.sinks import BufferingEventSink
from itests.agent_tools.plan_tools import (
    ANALYTICS_TOOL,
    DATA_TOOL,
    LIMITED_PER_MINUTE,
    LIMITED_TOOL,
    plan_tools,
)
from itests.agent_tools.platform import Member, assert_mentions_none, composition, deployment

THEME = "tool dispatcher + execution engine"
__all__ = ["composition"]  # the fixture, imported for pytest

Call = tuple[str, Mapping[str, object]]


@dataclass(frozen=True)
class Session:
    """One user's dispatcher session: what it returned and what its sink received."""

    member: Member
    results: list[ToolExecutionResult]
    events: tuple[RunEventEnvelope, ...]
    metrics: DispatcherMetrics

    @property
    def statuses(self) -> list[ToolStatus]:
        return [result.status for result in self.results]


async def call_tools(
    member: Member, calls: Sequence[Call], *, agent_name: str = "itest"
) -> Session:
    """Run ``calls`` one after another through a dispatcher of the member's own."""
    sink = BufferingEventSink(member.context)
    results = []
    async with member.dispatchers.create_for_context(
        member.caller, sink, agent_name=agent_name
    ) as dispatcher:
        for name, arguments in calls:
            results.append(await dispatcher.execute_tool(name, arguments))
        metrics = dispatcher.metrics()
    await sink.close()
    return Session(member=member, results=results, events=sink.events, metrics=metrics)


def assert_paired(session: Session, calls: Sequence[Call]) -> None:
    """One ``tool_executing`` then one ``tool_completed`` per call, in call order, each
    with the member's own IDs and a gapless seq, agreeing with the returned result."""
    events = session.events
    ctx = session.member.context
    assert len(events) == 2 * len(calls)
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert {(event.run_id, event.thread_id, event.request_id) for event in events} == {
        (ctx.run_id, ctx.thread_id, ctx.request_id)
    }
    for (name, _), result, executing, completed in zip(
        calls, session.results, events[::2], events[1::2], strict=True
    ):
        assert executing.type is EventType.TOOL_EXECUTING
        assert completed.type is EventType.TOOL_COMPLETED
        assert executing.payload["tool_name"] == completed.payload["tool_name"] == name
        assert completed.payload["success"] is result.success
        if not result.success:
            assert result.status.value in str(completed.payload["result_summary"])
    assert session.metrics.tools_executed == len(calls)
    assert session.metrics.events_emitted == 2 * len(calls)
    assert session.metrics.events_undelivered == 0


def note_contents(result: ToolExecutionResult) -> list[str]:
    """The contents of the notes a ``notes.search`` result lists."""
    found = result.result
    assert isinstance(found, dict)
    notes = found["notes"]
    assert isinstance(notes, list)
    return [str(note["content"]) for note in notes if isinstance(note, dict)]


def others_of(member: Member, members: Sequence[Member]) -> list[str]:
    return [ident for other in members if other is not member for ident in other.identifiers()]


def wire(session: Session) -> list[object]:
    return [event.to_wire() for event in session.events] + [
        result.model_dump(mode="json") for result in session.results
    ]


async def test_each_tool_call_emits_exactly_one_tool_executing_and_one_tool_completed(
    tmp_path: Path, composition: str
) -> None:
    async with deployment(tmp_path, composition, extra_tools=plan_tools()) as dep:
        members = await dep.members("caller", 5)

        def calls_of(member: Member) -> list[Call]:
            return [
                ("calculator", {"expression": "6*7"}),
                ("notes.add", {"content": f"kept by {member.user_id}"}),
                ("calculator", {"expression": "1/0"}),
                ("no.such_tool", {}),
                ("notes.add", {"content": ""}),
                (ANALYTICS_TOOL, {}),
                ("notes.search", {"query": "kept"}),
            ]

        sessions = await asyncio.gather(
            *(call_tools(member, calls_of(member)) for member in members)
        )
        for member, session in zip(members, sessions, strict=True):
            assert_paired(session, calls_of(member))
            assert session.statuses == [
                ToolStatus.SUCCESS,
                ToolStatus.SUCCESS,
                ToolStatus.ERROR,
                ToolStatus.NOT_FOUND,
                ToolStatus.INVALID_INPUT,
                ToolStatus.PERMISSION_DENIED,
                ToolStatus.SUCCESS,
            ]
            assert note_contents(session.results[-1]) == [f"kept by {member.user_id}"]
            assert_mentions_none(wire(session), others_of(member, members))
        await dep.assert_idle()


async def test_a_denied_tool_call_still_pairs_its_events_and_changes_nothing(
    tmp_path: Path, composition: str
) -> None:
    async with deployment(tmp_path, composition, extra_tools=plan_tools()) as dep:
        free_users, pro_users = await asyncio.gather(
            dep.members("free", 3), dep.members("pro", 2, plan=Plan.PRO)
        )
        members = [*free_users, *pro_users]

        def calls_of(member: Member) -> list[Call]:
            return [(DATA_TOOL, {"text": f"imported by {member.user_id}"})]

        sessions = await asyncio.gather(
            *(call_tools(member, calls_of(member)) for member in members)
        )
        notes = await asyncio.gather(*(member.notes() for member in members))
        usage = await asyncio.gather(*(dep.tool_usage(member) for member in members))
        for member, session, kept, used in zip(members, sessions, notes, usage, strict=True):
            assert_paired(session, calls_of(member))
            assert_mentions_none(wire(session), others_of(member, members))
            result = session.results[0]
            if member in free_users:
                assert result.status is ToolStatus.PERMISSION_DENIED
                assert Plan.PRO in result.upgrade_plans
                assert result.result is None
                assert session.events[1].payload["success"] is False
                assert kept == []  # nothing was written
                assert used == []  # and the handler never ran
            else:
                assert result.status is ToolStatus.SUCCESS
                assert [note.content for note in kept] == [f"imported by {member.user_id}"]
                assert [(record.tool_name, record.success) for record in used] == [
                    (DATA_TOOL, True)
                ]
        await dep.assert_idle()


async def test_one_users_tool_rate_limit_does_not_limit_another_user(
    tmp_path: Path, composition: str
) -> None:
    async with deployment(tmp_path, composition, extra_tools=plan_tools()) as dep:
        hasty, *calm = await dep.members("user", 4)
        over = LIMITED_PER_MINUTE + 2

        def echoes(member: Member, count: int) -> list[Call]:
            return [(LIMITED_TOOL, {"text": f"{member.user_id} #{n}"}) for n in range(count)]

        hasty_session, *calm_sessions = await asyncio.gather(
            call_tools(hasty, [*echoes(hasty, over), ("calculator", {"expression": "2+2"})]),
            *(call_tools(member, echoes(member, LIMITED_PER_MINUTE)) for member in calm),
        )
        assert_paired(hasty_session, [*echoes(hasty, over), ("calculator", {})])
        assert hasty_session.statuses == [
            *[ToolStatus.SUCCESS] * LIMITED_PER_MINUTE,
            *[ToolStatus.RATE_LIMITED] * 2,
            ToolStatus.SUCCESS,  # the limit is per tool: the calculator is not limited
        ]
        for limited in hasty_session.results[LIMITED_PER_MINUTE:over]:
            assert limited.retry_after_seconds is not None
            assert limited.retry_after_seconds > 0
        for member, session in zip(calm, calm_sessions, strict=True):
            assert_paired(session, echoes(member, LIMITED_PER_MINUTE))
            assert session.statuses == [ToolStatus.SUCCESS] * LIMITED_PER_MINUTE
            assert [result.result for result in session.results] == [
                {"echo": f"{member.user_id} #{n}"} for n in range(LIMITED_PER_MINUTE)
            ]
            assert_mentions_none(wire(session), hasty.identifiers())
        # Each user's window is their own: a calm user's next call is the one refused.
        (one_more,) = (await call_tools(calm[0], echoes(calm[0], 1))).results
        assert one_more.status is ToolStatus.RATE_LIMITED
        newcomer = await dep.member("newcomer")
        fresh = await call_tools(newcomer, echoes(newcomer, LIMITED_PER_MINUTE))
        assert fresh.statuses == [ToolStatus.SUCCESS] * LIMITED_PER_MINUTE
        await dep.assert_idle()


async def test_invalid_tool_input_is_a_result_for_that_user_only_with_no_side_effects(
    tmp_path: Path, composition: str
) -> None:
    async with deployment(tmp_path, composition) as dep:
        sloppy, careful = await asyncio.gather(dep.member("sloppy"), dep.member("careful"))
        bad_calls: list[Call] = [
            # An extra field naming another user is refused like any unknown field.
            ("notes.add", {"content": "planted", "user_id": careful.user_id}),
            ("notes.add", {"content": ""}),
            ("notes.add", {"content": "x" * 100_000}),
            ("calculator", {"expression": 42}),
            ("notes.delete", {}),
        ]
        good_calls: list[Call] = [
            ("notes.add", {"content": "careful note"}),
            ("notes.search", {"query": "careful"}),
        ]
        bad, good = await asyncio.gather(
            call_tools(sloppy, bad_calls), call_tools(careful, good_calls)
        )
        assert_paired(bad, bad_calls)
        assert bad.statuses == [ToolStatus.INVALID_INPUT] * len(bad_calls)
        for result in bad.results:
            assert result.error_code == "INVALID_INPUT"
            assert result.result is None
            assert careful.user_id not in str(result.error_message)
        assert_paired(good, good_calls)
        assert good.statuses == [ToolStatus.SUCCESS, ToolStatus.SUCCESS]
        assert_mentions_none(wire(good), [*sloppy.identifiers(), "planted"])
        assert note_contents(good.results[1]) == ["careful note"]

        # No side effects anywhere: no notes, no usage, and the other user's data as written.
        assert await sloppy.notes() == []
        assert await dep.tool_usage(sloppy) == []
        assert [note.content for note in await careful.notes()] == ["careful note"]
        assert [record.tool_name for record in await dep.tool_usage(careful)] == [
            "notes.search",
            "notes.add",
        ]
        await dep.assert_idle()


async def test_tool_usage_is_recorded_under_the_calling_user_only(
    tmp_path: Path, composition: str
) -> None:
    async with deployment(tmp_path, composition, extra_tools=plan_tools()) as dep:
        counter, writer, clock = await dep.members("user", 3)
        plans: dict[str, list[Call]] = {
            counter.user_id: [
                ("calculator", {"expression": "1+1"}),
                ("calculator", {"expression": "2*3"}),
                ("calculator", {"expression": "1/0"}),
            ],
            writer.user_id: [
                ("notes.add", {"content": "writer's note"}),
                ("time.now", {}),
            ],
            clock.user_id: [
                ("time.now", {}),
                (ANALYTICS_TOOL, {}),  # denied: never runs, so never recorded
            ],
        }
        members = [counter, writer, clock]
        sessions = await asyncio.gather(
            *(call_tools(member, plans[member.user_id]) for member in members)
        )
        for member, session in zip(members, sessions, strict=True):
            assert_paired(session, plans[member.user_id])
            records = await dep.tool_usage(member)
            executed = [
                (name, result)
                for (name, _), result in zip(plans[member.user_id], session.results, strict=True)
                if result.status is not ToolStatus.PERMISSION_DENIED
            ]
            # Newest first; one record per executed call, all under the caller's run.
            assert [(r.tool_name, r.success, r.error_code) for r in reversed(records)] == [
                (name, result.success, result.error_code) for name, result in executed
            ]
            assert {record.run_id for record in records} == {member.context.run_id}
            assert_mentions_none(
                [record.model_dump(mode="json") for record in records],
                others_of(member, members),
            )
        failed = sessions[0].results[2]
        assert failed.status is ToolStatus.ERROR
        assert failed.error_code is not None
        assert "DIVISION" in failed.error_code
        usage_json = json.dumps([r.model_dump(mode="json") for r in await dep.tool_usage(counter)])
        assert "notes.add" not in usage_json
        assert "time.now" not in usage_json
        await dep.assert_idle()
