"""Client message parsing: every message type, and each malformed input with its error."""

from __future__ import annotations

import json

import pytest

from context.api import new_run_id, new_thread_id
from websocket.gateway.api import (
    GatewayError,
    InvalidMessageError,
    MalformedJSONError,
    UnknownMessageTypeError,
)
from websocket.gateway.messages import (
    CancelRun,
    ErrorMessage,
    Ping,
    PongMessage,
    RefreshToken,
    Resume,
    RunAcceptedMessage,
    StartAgent,
    parse_client_message,
    to_text,
)

RUN = new_run_id()
THREAD = new_thread_id()


def parse(message: object) -> object:
    return parse_client_message(json.dumps(message))


def test_every_client_message_type_parses() -> None:
    assert parse({"type": "ping"}) == Ping(type="ping")
    start = parse(
        {
            "type": "start_agent",
            "agent": "research",
            "message": "hello",
            "thread_id": THREAD,
            "client_msg_id": "c-1",
        }
    )
    assert isinstance(start, StartAgent)
    assert (start.thread_id, start.client_msg_id) == (THREAD, "c-1")
    assert parse({"type": "cancel_run", "run_id": RUN}) == CancelRun(type="cancel_run", run_id=RUN)
    resume = parse({"type": "resume", "run_id": RUN, "after_seq": 7})
    assert isinstance(resume, Resume)
    assert resume.after_seq == 7
    refresh = parse({"type": "refresh_token", "access_token": "a.b.c"})
    assert isinstance(refresh, RefreshToken)
    assert "a.b.c" not in repr(refresh)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("{", MalformedJSONError),
        ("", MalformedJSONError),
        ("\x00\x01", MalformedJSONError),
        ("[" * 10000, MalformedJSONError),
        ('{"type": "shutdown"}', UnknownMessageTypeError),
        ('{"type": 1}', UnknownMessageTypeError),
        ('{"type": null}', UnknownMessageTypeError),
        ('{"agent": "research"}', InvalidMessageError),
        ("[]", InvalidMessageError),
        ('"ping"', InvalidMessageError),
        ("42", InvalidMessageError),
    ],
)
def test_malformed_frames_are_refused_with_their_error(
    frame: str, error: type[GatewayError]
) -> None:
    with pytest.raises(error):
        parse_client_message(frame)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"type": "start_agent", "agent": "research"}, "message"),
        ({"type": "start_agent", "agent": "", "message": "x"}, "agent"),
        ({"type": "start_agent", "agent": "research", "message": "   "}, "message"),
        ({"type": "start_agent", "agent": "research", "message": "x" * 32_001}, "message"),
        ({"type": "start_agent", "agent": "a\nb", "message": "x"}, "agent"),
        (
            {"type": "start_agent", "agent": "research", "message": "x", "thread_id": "t1"},
            "thread_id",
        ),
        (
            {"type": "start_agent", "agent": "research", "message": "x", "client_msg_id": "a b"},
            "client_msg_id",
        ),
        ({"type": "start_agent", "agent": "research", "message": 5}, "message"),
        ({"type": "cancel_run", "run_id": THREAD}, "run_id"),  # a thread ID is not a run ID
        ({"type": "resume", "run_id": RUN, "after_seq": "3"}, "after_seq"),
        ({"type": "resume", "run_id": RUN, "after_seq": 1.5}, "after_seq"),
        ({"type": "resume", "run_id": RUN, "after_seq": True}, "after_seq"),
        ({"type": "resume", "run_id": RUN}, "after_seq"),
        ({"type": "refresh_token", "access_token": ""}, "access_token"),
        ({"type": "ping", "extra": 1}, "extra"),
    ],
)
def test_invalid_fields_are_named_in_the_error(message: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        parse(message)
    assert field in caught.value.message


def test_errors_never_echo_the_input() -> None:
    secret = "hunter2-secret-value"
    with pytest.raises(GatewayError) as caught:
        parse({"type": "resume", "run_id": secret, "after_seq": secret})
    assert secret not in caught.value.message


def test_binary_frames_are_refused() -> None:
    with pytest.raises(InvalidMessageError, match="Binary"):
        parse_client_message(b'{"type": "ping"}')


def test_server_replies_have_exactly_the_designed_fields() -> None:
    assert json.loads(to_text(PongMessage())) == {"type": "pong"}
    assert json.loads(to_text(RunAcceptedMessage(run_id=RUN, thread_id=THREAD))) == {
        "type": "run_accepted",
        "run_id": RUN,
        "thread_id": THREAD,
        "client_msg_id": None,
    }
    assert json.loads(to_text(ErrorMessage(error_code="INVALID_JSON", message="m"))) == {
        "type": "error",
        "error_code": "INVALID_JSON",
        "message": "m",
    }
