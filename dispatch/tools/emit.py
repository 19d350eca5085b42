"""Sending one event through a :class:`~dispatch.tools.api.RunEventSink`, safely.

Work that emits events (tool calls, agent steps) must never fail because an event could not
be delivered, and exactly-once events must never be cut off half-way by a cancellation.
:func:`emit_payload` turns a sink's refusal or failure into ``False``;
:func:`emit_to_completion` also finishes the emit when the calling task is cancelled
meanwhile, and re-raises the cancellation afterwards.
"""

from __future__ import annotations

import asyncio

import structlog

from dispatch.tools.api import EventPayload, RunEventSink

__all__ = ["emit_payload", "emit_to_completion"]

log = structlog.get_logger(__name__)


async def emit_payload(sink: RunEventSink, payload: EventPayload, *, agent_name: str) -> bool:
    """Send one event through ``sink``; ``False`` if the sink refused it or failed.

    Never raises (except cancellation): an event that cannot be delivered must not stop
    the work it reports on.
    """
    try:
        accepted = await sink.emit(
            payload.event_type.value,
            agent_name=agent_name,
            payload=payload.model_dump(mode="json"),
        )
    except Exception as exc:
        log.warning(
            "event_sink_failed", event_type=payload.event_type.value, exc_type=type(exc).__name__
        )
        return False
    return accepted is True


async def emit_to_completion(sink: RunEventSink, payload: EventPayload, *, agent_name: str) -> bool:
    """:func:`emit_payload`, finished even when the calling task is cancelled meanwhile.

    Exactly-once events need this: an emit cut off half-way might or might not have been
    delivered, so it is never cut off. The caller's cancellation is re-raised once the
    event is out.
    """
    task = asyncio.ensure_future(emit_payload(sink, payload, agent_name=agent_name))
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()
