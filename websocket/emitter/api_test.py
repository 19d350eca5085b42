"""The event models: the wire envelope of design section 5, payload checks, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from context import new_request_id, new_run_id, new_thread_id, new_user_id
from websocket.emitter import api
from websocket.emitter.api import (
    PAYLOAD_MODELS,
    WIRE_FIELDS,
    EventDraft,
    EventEnvelope,
    EventType,
    RoutedEvent,
)

VALID_PAYLOADS: dict[EventType, dict[str, Any]] = {
    EventType.AGENT_STARTED: {"status": "started", "message": "go"},
    EventType.AGENT_THINKING: {"thought": "hmm", "step": 2, "message": "thinking"},
    EventType.TOOL_EXECUTING: {
        "tool_name": "calculator",
        "tool_input": {"expression": "1+1"},
        "message": "running",
    },
    EventType.TOOL_COMPLETED: {
        "tool_name": "calculator",
        "success": True,
        "result_summary": "2",
        "execution_time_ms": 1.5,
        "message": "done",
    },
    EventType.AGENT_COMPLETED: {"success": True, "result": {"answer": 2}, "message": "done"},
    EventType.AGENT_ERROR: {
        "error_type": "timeout",
        "error_message": "took too long",
        "recoverable": False,
        "message": "failed",
    },
    EventType.PROGRESS_UPDATE: {
        "progress_percentage": 50.0,
        "current_step": "half",
        "message": "50%",
    },
}


def envelope_fields(
    event_type: EventType = EventType.AGENT_STARTED, **changes: Any
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "type": event_type,
        "run_id": new_run_id(),
        "thread_id": new_thread_id(),
        "agent_name": "assistant",
        "seq": 1,
        "timestamp": datetime(2025, 1, 31, 12, 0, 0, 123456, tzinfo=UTC),
        "request_id": new_request_id(),
        "payload": VALID_PAYLOADS[event_type],
    }
    fields.update(changes)
    return fields


def test_event_types_are_the_protocols_seven() -> None:
    assert {kind.value for kind in EventType} == {
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_completed",
        "agent_error",
        "progress_update",
    }
    assert set(PAYLOAD_MODELS) == set(EventType)


@pytest.mark.parametrize("event_type", list(EventType))
def test_payload_models_have_exactly_the_design_fields(event_type: EventType) -> None:
    expected = {
        EventType.AGENT_STARTED: {"status", "message"},
        EventType.AGENT_THINKING: {"thought", "step", "message"},
        EventType.TOOL_EXECUTING: {"tool_name", "tool_input", "message"},
        EventType.TOOL_COMPLETED: {
            "tool_name",
            "success",
            "result_summary",
            "execution_time_ms",
            "message",
        },
        EventType.AGENT_COMPLETED: {"success", "result", "message"},
        EventType.AGENT_ERROR: {"error_type", "error_message", "recoverable", "message"},
        EventType.PROGRESS_UPDATE: {"progress_percentage", "current_step", "message"},
    }[event_type]
    assert set(PAYLOAD_MODELS[event_type].model_fields) == expected
    dumped = PAYLOAD_MODELS[event_type].model_validate(VALID_PAYLOADS[event_type]).model_dump()
    assert set(dumped) == expected


@pytest.mark.parametrize("event_type", list(EventType))
def test_to_wire_is_exactly_the_design_envelope(event_type: EventType) -> None:
    fields = envelope_fields(event_type, seq=7)
    wire = EventEnvelope.model_validate(fields).to_wire()
    assert list(wire) == list(WIRE_FIELDS)
    assert wire == {
        "type": event_type.value,
        "run_id": fields["run_id"],
        "thread_id": fields["thread_id"],
        "agent_name": "assistant",
        "seq": 7,
        "timestamp": "2025-01-31T12:00:00.123456Z",
        "request_id": fields["request_id"],
        "payload": VALID_PAYLOADS[event_type],
    }


def test_to_json_is_the_wire_dict_and_parses_back() -> None:
    envelope = EventEnvelope.model_validate(envelope_fields(EventType.TOOL_EXECUTING))
    text = envelope.to_json()
    assert json.loads(text) == envelope.to_wire()
    assert list(json.loads(text)) == list(WIRE_FIELDS)
    assert EventEnvelope.model_validate_json(text) == envelope


def test_timestamp_is_converted_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2025, 1, 31, 14, 0, 0, tzinfo=plus_two)
    envelope = EventEnvelope.model_validate(envelope_fields(timestamp=local))
    assert envelope.timestamp == datetime(2025, 1, 31, 12, 0, 0, tzinfo=UTC)
    assert envelope.to_wire()["timestamp"] == "2025-01-31T12:00:00.000000Z"


@pytest.mark.parametrize(
    "changes",
    [
        {"seq": 0},
        {"seq": -1},
        {"seq": True},
        {"seq": "1"},
        {"timestamp": datetime(2025, 1, 1)},  # naive
        {"run_id": ""},
        {"run_id": "test"},  # a placeholder, not an ID
        {"run_id": "run 1"},
        {"thread_id": "thr_{x}"},
        {"request_id": "r" * 200},
        {"agent_name": ""},
        {"agent_name": "   "},
        {"agent_name": "a" * 129},
        {"agent_name": "bad\nname"},
        {"type": "agent_exploded"},
        {"payload": {"status": "started", "message": "x", "user_id": "usr_x"}},
        {"payload": {"thought": "wrong type's payload"}},
    ],
    ids=repr,
)
def test_invalid_envelopes_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EventEnvelope.model_validate(envelope_fields(**changes))


def test_unknown_envelope_keys_are_refused() -> None:
    with pytest.raises(ValidationError):
        EventEnvelope.model_validate({**envelope_fields(), "user_id": new_user_id()})


def test_envelope_is_immutable() -> None:
    envelope = EventEnvelope.model_validate(envelope_fields())
    with pytest.raises(ValidationError):
        setattr(envelope, "seq", 2)  # noqa: B010  (assignment mypy would refuse)


def test_draft_sequenced_and_back() -> None:
    fields = envelope_fields()
    del fields["seq"]
    draft = EventDraft.model_validate(fields)
    envelope = draft.sequenced(3)
    assert envelope.seq == 3
    assert envelope.draft() == draft
    with pytest.raises(ValidationError):
        draft.sequenced(0)


def test_routed_event_never_puts_the_owner_on_the_wire() -> None:
    user_id = new_user_id()
    routed = RoutedEvent(user_id=user_id, envelope=EventEnvelope.model_validate(envelope_fields()))
    wire_text = routed.envelope.to_json()
    assert user_id not in wire_text
    assert "user_id" not in wire_text
    with pytest.raises(ValidationError):
        RoutedEvent(user_id="null", envelope=routed.envelope)


@pytest.mark.parametrize(
    ("event_type", "payload"),
    [
        (EventType.AGENT_STARTED, {"status": "", "message": "x"}),
        (EventType.AGENT_THINKING, {"step": 1}),
        (EventType.AGENT_THINKING, {"thought": "x", "step": -1}),
        (EventType.AGENT_THINKING, {"thought": "x", "step": "1"}),
        (EventType.TOOL_EXECUTING, {"tool_input": {}}),
        (EventType.TOOL_EXECUTING, {"tool_name": "t", "tool_input": ["not", "an", "object"]}),
        (EventType.TOOL_COMPLETED, {"tool_name": "t"}),
        (EventType.TOOL_COMPLETED, {"tool_name": "t", "success": "yes"}),
        (EventType.TOOL_COMPLETED, {"tool_name": "t", "success": 1}),
        (EventType.TOOL_COMPLETED, {"tool_name": "t", "success": True, "execution_time_ms": -1}),
        (
            EventType.TOOL_COMPLETED,
            {"tool_name": "t", "success": True, "execution_time_ms": float("nan")},
        ),
        (EventType.AGENT_COMPLETED, {"success": "true"}),
        (EventType.AGENT_ERROR, {"error_type": "x"}),
        (EventType.AGENT_ERROR, {"error_type": "x", "error_message": 5}),
        (EventType.PROGRESS_UPDATE, {"progress_percentage": 101, "current_step": "x"}),
        (EventType.PROGRESS_UPDATE, {"progress_percentage": -0.5, "current_step": "x"}),
        (EventType.PROGRESS_UPDATE, {"progress_percentage": "50", "current_step": "x"}),
        (EventType.PROGRESS_UPDATE, {"progress_percentage": 50}),
        (EventType.AGENT_STARTED, {"status": "started", "message": "x", "metadata": {}}),
    ],
    ids=repr,
)
def test_payload_models_reject_bad_payloads(event_type: EventType, payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        PAYLOAD_MODELS[event_type].model_validate(payload)


def test_errors_share_one_base_with_stable_codes_and_grpc_statuses() -> None:
    expected = {
        api.InvalidEventError: ("INVALID_EVENT", "INVALID_ARGUMENT"),
        api.InvalidReplayRequestError: ("INVALID_REPLAY_REQUEST", "INVALID_ARGUMENT"),
        api.ReplayNotFoundError: ("RUN_NOT_FOUND", "NOT_FOUND"),
        api.EventOwnershipError: ("EVENT_OWNERSHIP_VIOLATION", "PERMISSION_DENIED"),
        api.EmitterClosedError: ("EMITTER_CLOSED", "FAILED_PRECONDITION"),
        api.ReplayUnavailableError: ("REPLAY_UNAVAILABLE", "UNAVAILABLE"),
        api.DeliveryFailedError: ("DELIVERY_FAILED", "UNAVAILABLE"),
    }
    for error_class, (code, status) in expected.items():
        assert issubclass(error_class, api.EmitterError)
        error = error_class("why")
        assert (error.error_code, error.grpc_status_name, error.message) == (code, status, "why")
