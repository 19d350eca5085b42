"""The WebSocket side of the run scenarios: real ``websockets`` clients of the gateway.

:class:`~server.testing.WsClient` speaks the gateway protocol; the helpers here add what
the run scenarios need on top: starting several runs on one connection without waiting in
between, reading a refusal, and collecting the events of several runs that interleave on
one connection - failing on any frame that belongs to none of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from server.testing import TERMINAL_EVENTS, WsClient

__all__ = [
    "assert_wire_run",
    "collect_runs",
    "connections",
    "expect_error",
    "start_refused",
    "start_runs",
]

Frame = dict[str, Any]


@asynccontextmanager
async def connections(url: str, tokens: Sequence[str]) -> AsyncIterator[list[WsClient]]:
    """One authenticated connection per token (all open at once), closed on exit."""
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(await WsClient.connect(url, token)) for token in tokens
        ]
        yield clients


async def start_runs(ws: WsClient, agent: str, messages: Sequence[str]) -> list[Frame]:
    """Send one ``start_agent`` per message back to back; the ``run_accepted`` replies in
    order (other frames received meanwhile are kept in ``ws.pending``)."""
    for message in messages:
        await ws.send({"type": "start_agent", "agent": agent, "message": message})
    accepted: list[Frame] = []
    while len(accepted) < len(messages):
        frame = await ws.recv()
        if frame.get("type") == "run_accepted":
            accepted.append(frame)
        elif frame.get("type") == "error":
            raise AssertionError(f"start_agent refused: {frame}")
        else:
            ws.pending.append(frame)
    return accepted


async def expect_error(ws: WsClient, message: Frame) -> Frame:
    """Send ``message`` and return the ``error`` frame that answers it (fails if a run is
    accepted instead; events received meanwhile are kept in ``ws.pending``)."""
    await ws.send(message)
    while True:
        frame = await ws.recv()
        if frame.get("type") == "error":
            return frame
        if frame.get("type") == "run_accepted":
            raise AssertionError(f"a run was accepted: {frame}")
        ws.pending.append(frame)


async def start_refused(ws: WsClient, agent: str, message: str) -> Frame:
    """Send ``start_agent`` and return the ``error`` frame that refuses it."""
    return await expect_error(ws, {"type": "start_agent", "agent": agent, "message": message})


async def collect_runs(ws: WsClient, run_ids: Iterable[str]) -> dict[str, list[Frame]]:
    """Every event of each run in ``run_ids`` up to its terminal one, as received on
    ``ws``; fails on a frame of any other run (or no run)."""
    wanted = set(run_ids)
    events: dict[str, list[Frame]] = {run_id: [] for run_id in wanted}
    open_runs = set(wanted)
    backlog, ws.pending = ws.pending, []

    def take(frame: Frame) -> None:
        run_id = frame.get("run_id")
        if run_id not in wanted:
            raise AssertionError(f"a frame of no run of this test on this connection: {frame}")
        events[run_id].append(frame)
        if frame.get("type") in TERMINAL_EVENTS:
            open_runs.discard(run_id)

    for frame in backlog:
        take(frame)
    while open_runs:
        take(await ws.recv())
    return events


def assert_wire_run(events: list[Frame], run_id: str, *, ending: str = "agent_completed") -> None:
    """One run's frames on the wire: its own run ID, seq 1..n, one thread, started first,
    exactly one terminal event and it is last (``ending``), tool events in pairs."""
    assert events, f"no events of run {run_id}"
    assert {event["run_id"] for event in events} == {run_id}
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert len({event["thread_id"] for event in events}) == 1
    types = [event["type"] for event in events]
    assert types[0] == "agent_started"
    assert sum(kind in TERMINAL_EVENTS for kind in types) == 1
    assert types[-1] == ending, types
    tools = [kind for kind in types if kind in ("tool_executing", "tool_completed")]
    assert tools == ["tool_executing", "tool_completed"] * (len(tools) // 2)
