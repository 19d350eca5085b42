"""The JSON messages of the WebSocket protocol (design section 5), as pydantic models.

Client messages form one union discriminated by ``type``; :func:`parse_client_message`
turns a text frame into one of them or into a :class:`~websocket.gateway.api.GatewayError`
that says what was wrong without echoing the input back (it may be large or hostile):
invalid JSON, an unknown ``type``, or missing/invalid fields (named by location only).

Server replies are models too, serialized with :func:`to_text`. Events use the emitter's
envelope (``EventEnvelope.to_json``) and authentication messages come from
:mod:`websocket.auth.api`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from context.api import IDKind, is_valid_id
from websocket.emitter.api import AgentName
from websocket.gateway.api import (
    GatewayError,
    GatewayErrorCode,
    InvalidMessageError,
    MalformedJSONError,
    UnknownMessageTypeError,
)

__all__ = [
    "MAX_ACCESS_TOKEN_CHARS",
    "MAX_USER_MESSAGE_CHARS",
    "CancelRun",
    "ClientMessage",
    "ErrorMessage",
    "Ping",
    "PongMessage",
    "RefreshToken",
    "Resume",
    "RunAcceptedMessage",
    "ServerMessage",
    "StartAgent",
    "error_message",
    "parse_client_message",
    "to_text",
]

#: Longest user message a ``start_agent`` may carry (the frame limit is 64 KiB).
MAX_USER_MESSAGE_CHARS = 32_000
MAX_ACCESS_TOKEN_CHARS = 16_384
_MAX_ERROR_LOCATIONS = 5


def _id_of(kind: IDKind) -> AfterValidator:
    def check(value: str) -> str:
        if not is_valid_id(value, kind):
            raise ValueError(f"must be a {kind.name.lower()} ID")
        return value

    return AfterValidator(check)


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


RunID = Annotated[str, StringConstraints(max_length=64), _id_of(IDKind.RUN)]
ThreadID = Annotated[str, StringConstraints(max_length=64), _id_of(IDKind.THREAD)]
ClientMsgID = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=re.compile(r"^[A-Za-z0-9_.:\-]+$"))
]
UserText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_USER_MESSAGE_CHARS),
    AfterValidator(_not_blank),
]


class _ClientModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class StartAgent(_ClientModel):
    """``{"type":"start_agent","agent","message","thread_id"?,"client_msg_id"?}``."""

    type: Literal["start_agent"]
    agent: AgentName
    message: UserText
    thread_id: ThreadID | None = None
    client_msg_id: ClientMsgID | None = None


class CancelRun(_ClientModel):
    type: Literal["cancel_run"]
    run_id: RunID


class Resume(_ClientModel):
    """Replay the run's events with ``seq > after_seq``, then continue live."""

    type: Literal["resume"]
    run_id: RunID
    after_seq: StrictInt = Field(ge=0)


class Ping(_ClientModel):
    type: Literal["ping"]


class RefreshToken(_ClientModel):
    type: Literal["refresh_token"]
    access_token: str = Field(min_length=1, max_length=MAX_ACCESS_TOKEN_CHARS, repr=False)


ClientMessage = Annotated[
    StartAgent | CancelRun | Resume | Ping | RefreshToken, Field(discriminator="type")
]

_CLIENT_MESSAGE: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)


class _ServerModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunAcceptedMessage(_ServerModel):
    type: Literal["run_accepted"] = "run_accepted"
    run_id: str
    thread_id: str
    client_msg_id: str | None = None


class PongMessage(_ServerModel):
    type: Literal["pong"] = "pong"


class ErrorMessage(_ServerModel):
    type: Literal["error"] = "error"
    error_code: GatewayErrorCode | str
    message: str


ServerMessage = RunAcceptedMessage | PongMessage | ErrorMessage


def to_text(message: BaseModel) -> str:
    """A server message as the JSON text of one frame."""
    return message.model_dump_json()


def error_message(error: GatewayError) -> ErrorMessage:
    return ErrorMessage(error_code=error.error_code, message=error.message)


def _locations(error: ValidationError) -> str:
    places = []
    for detail in error.errors(include_input=False, include_url=False)[:_MAX_ERROR_LOCATIONS]:
        # Drop the union member name pydantic puts first ("start_agent.message").
        location = [str(part) for part in detail["loc"][1:]] or ["(message)"]
        places.append(f"{'.'.join(location)}: {detail['msg']}")
    return "; ".join(places)


def parse_client_message(data: str | bytes) -> ClientMessage:
    """Validate one frame as a client message; raise a :class:`GatewayError` otherwise."""
    if isinstance(data, bytes):
        raise InvalidMessageError("Binary frames are not accepted; send JSON text frames.")
    try:
        return _CLIENT_MESSAGE.validate_json(data)
    except ValidationError as exc:
        kinds = {detail["type"] for detail in exc.errors(include_input=False)}
        if "json_invalid" in kinds:
            raise MalformedJSONError from None
        if "union_tag_invalid" in kinds:
            raise UnknownMessageTypeError from None
        if "union_tag_not_found" in kinds:
            raise InvalidMessageError("The message has no 'type' field.") from None
        if kinds & {"model_attributes_type", "model_type", "dict_type"}:
            raise InvalidMessageError("The message must be a JSON object.") from None
        raise InvalidMessageError(f"Invalid message fields: {_locations(exc)}.") from None
