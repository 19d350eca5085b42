"""Test helpers for code that emits events: deliveries that record or fail, a replay store.

For tests of this and other packages (dispatch, gateway) that need an
:class:`~websocket.emitter.api.EventDelivery` without a live WebSocket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from context.execution_context import UserExecutionContext
from websocket.emitter.api import EventDraft, EventEnvelope, EventType, ReplayBuffer, RoutedEvent

__all__ = ["FailingDelivery", "RecordingDelivery", "ReplayStore", "draft_for", "fill"]


def draft_for(ctx: UserExecutionContext, thought: str = "t") -> EventDraft:
    """An ``agent_thinking`` draft of ``ctx``'s run."""
    return EventDraft(
        type=EventType.AGENT_THINKING,
        run_id=ctx.run_id,
        thread_id=ctx.thread_id,
        agent_name="assistant",
        timestamp=datetime.now(UTC),
        request_id=ctx.request_id,
        payload={"thought": thought, "step": None, "message": ""},
    )


async def fill(replay: ReplayBuffer, ctx: UserExecutionContext, count: int) -> None:
    """Append ``count`` drafts to ``ctx``'s run, thoughts "event 1", "event 2"..."""
    for i in range(count):
        await replay.append(ctx.user_id, ctx.run_id, draft_for(ctx, f"event {i + 1}"))


@dataclass
class RecordingDelivery:
    """Records every delivered event as a :class:`RoutedEvent`; reports ``reach``
    connections per event. ``received`` is set whenever an event arrives."""

    reach: int = 1
    delivered: list[RoutedEvent] = field(default_factory=list)
    received: asyncio.Event = field(default_factory=asyncio.Event)

    async def deliver(self, user_id: str, envelope: EventEnvelope) -> int:
        self.delivered.append(RoutedEvent(user_id=user_id, envelope=envelope))
        self.received.set()
        return self.reach

    def envelopes(self) -> list[EventEnvelope]:
        return [routed.envelope for routed in self.delivered]

    def seqs(self) -> Sequence[int]:
        return [routed.envelope.seq for routed in self.delivered]

    def users(self) -> set[str]:
        return {routed.user_id for routed in self.delivered}


@dataclass
class FailingDelivery:
    """A delivery whose every call raises ``error`` (a router that lost its backend)."""

    error: Exception = field(default_factory=lambda: ConnectionError("delivery backend down"))
    calls: int = 0

    async def deliver(self, user_id: str, envelope: EventEnvelope) -> int:
        self.calls += 1
        raise self.error


@dataclass
class ReplayStore:
    """One replay store for a test, and a way to open more buffers over the same store.

    ``opener`` makes a buffer: with Redis each call should give a new client (as another
    process would have); an in-memory store can only be shared within the process, so its
    opener hands out the same buffer each time. :meth:`close` closes every opened buffer.
    """

    backend: str
    opener: Callable[[], ReplayBuffer]
    opened: list[ReplayBuffer] = field(default_factory=list)

    def open(self) -> ReplayBuffer:
        buffer = self.opener()
        self.opened.append(buffer)
        return buffer

    async def close(self) -> None:
        for buffer in self.opened:
            await buffer.close()
