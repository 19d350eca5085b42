"""Conversions between the agents API models and ``ssot.agents.v1`` messages.

Shared by the gRPC server and client so both sides agree on every field. Timestamps travel
as ISO-8601 UTC text, event payloads as compact JSON text (NaN and Infinity refused).
Anything malformed coming from the wire raises :class:`~dispatch.agents.api.AgentError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

from pydantic import ValidationError

from dispatch.agents import agents_pb2
from dispatch.agents.api import AgentError, RunInfo, RunState
from dispatch.tools.api import EventType, RunEventEnvelope, format_timestamp

__all__ = [
    "MAX_PAYLOAD_JSON_BYTES",
    "RUN_ID_METADATA_KEY",
    "THREAD_ID_METADATA_KEY",
    "event_from_proto",
    "event_to_proto",
    "run_from_proto",
    "run_to_proto",
]

#: Initial metadata of StartRun: the IDs of the run being streamed.
RUN_ID_METADATA_KEY = "x-ssot-run-id"
THREAD_ID_METADATA_KEY = "x-ssot-thread-id"
#: The largest event payload accepted from the wire.
MAX_PAYLOAD_JSON_BYTES = 1024 * 1024

_STATE_TO_PROTO: Mapping[RunState, agents_pb2.RunState.ValueType] = {
    RunState.PENDING: agents_pb2.RUN_STATE_PENDING,
    RunState.RUNNING: agents_pb2.RUN_STATE_RUNNING,
    RunState.COMPLETED: agents_pb2.RUN_STATE_COMPLETED,
    RunState.FAILED: agents_pb2.RUN_STATE_FAILED,
    RunState.CANCELLED: agents_pb2.RUN_STATE_CANCELLED,
    RunState.TIMED_OUT: agents_pb2.RUN_STATE_TIMED_OUT,
}
_STATE_FROM_PROTO: Mapping[int, RunState] = {
    value: state for state, value in _STATE_TO_PROTO.items()
}


def _parse_time(text: str, what: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise AgentError(f"the service sent an unreadable {what}") from None
    if value.tzinfo is None:
        raise AgentError(f"the service sent a {what} without a time zone")
    return value.astimezone(UTC)


def _optional_time(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)


def event_to_proto(event: RunEventEnvelope) -> agents_pb2.RunEvent:
    return agents_pb2.RunEvent(
        type=event.type.value,
        run_id=event.run_id,
        thread_id=event.thread_id,
        agent_name=event.agent_name,
        seq=event.seq,
        timestamp=format_timestamp(event.timestamp),
        request_id=event.request_id,
        payload_json=json.dumps(
            event.payload, allow_nan=False, ensure_ascii=False, separators=(",", ":")
        ),
    )


def event_from_proto(message: agents_pb2.RunEvent) -> RunEventEnvelope:
    if len(message.payload_json) > MAX_PAYLOAD_JSON_BYTES:
        raise AgentError("the service sent an oversized event payload")
    try:
        payload = json.loads(message.payload_json)
        return RunEventEnvelope(
            type=EventType(message.type),
            run_id=message.run_id,
            thread_id=message.thread_id,
            agent_name=message.agent_name,
            seq=message.seq,
            timestamp=_parse_time(message.timestamp, "event timestamp"),
            request_id=message.request_id,
            payload=payload,
        )
    except (ValueError, ValidationError):
        raise AgentError("the service sent a malformed run event") from None


def run_to_proto(info: RunInfo) -> agents_pb2.Run:
    return agents_pb2.Run(
        run_id=info.run_id,
        thread_id=info.thread_id,
        agent_name=info.agent_name,
        state=_STATE_TO_PROTO[info.state],
        created_at=format_timestamp(info.created_at),
        started_at=_optional_time(info.started_at),
        finished_at=_optional_time(info.finished_at),
        result=info.result,
        error_type=info.error_type,
        error_message=info.error_message,
    )


def run_from_proto(message: agents_pb2.Run) -> RunInfo:
    state = _STATE_FROM_PROTO.get(message.state)
    if state is None:
        raise AgentError("the service sent a run in an unknown state")

    try:
        return RunInfo(
            run_id=message.run_id,
            thread_id=message.thread_id,
            agent_name=message.agent_name,
            state=state,
            created_at=_parse_time(message.created_at, "run timestamp"),
            started_at=(
                _parse_time(message.started_at, "run timestamp")
                if message.HasField("started_at")
                else None
            ),
            finished_at=(
                _parse_time(message.finished_at, "run timestamp")
                if message.HasField("finished_at")
                else None
            ),
            result=message.result if message.HasField("result") else None,
            error_type=message.error_type if message.HasField("error_type") else None,
            error_message=message.error_message if message.HasField("error_message") else None,
        )
    except ValidationError:
        raise AgentError("the service sent a malformed run") from None
