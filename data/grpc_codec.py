"""Conversions between ``data.api`` and the ``ssot.data.v1`` messages, and error codes.

Shared by the servicer and the client so that both read and write the wire form the same
way. Errors travel as a gRPC status plus the stable ``error_code`` in the trailing
metadata entry ``x-ssot-error-code``; :func:`error_from_rpc_error` turns them back into
the same :class:`~data.api.DataError` subclass.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import JsonValue

from data import data_pb2
from data.api import (
    DataAccessDeniedError,
    DataError,
    DataUnavailableError,
    InvalidInputError,
    Message,
    MessageRole,
    NotAuthenticatedError,
    Note,
    NotFoundError,
    Run,
    RunStatus,
    ScopeLimitExceededError,
    Thread,
)

__all__ = [
    "ERROR_CODE_METADATA_KEY",
    "error_code_of",
    "error_from_rpc_error",
    "json_from_wire",
    "json_to_wire",
    "message_from_proto",
    "message_to_proto",
    "note_from_proto",
    "note_to_proto",
    "role_from_proto",
    "role_to_proto",
    "run_from_proto",
    "run_to_proto",
    "status_from_proto",
    "status_to_proto",
    "thread_from_proto",
    "thread_to_proto",
]

ERROR_CODE_METADATA_KEY = "x-ssot-error-code"

# -- enums --------------------------------------------------------------------------------

_ROLES: dict[MessageRole, data_pb2.MessageRole.ValueType] = {
    MessageRole.USER: data_pb2.MESSAGE_ROLE_USER,
    MessageRole.ASSISTANT: data_pb2.MESSAGE_ROLE_ASSISTANT,
    MessageRole.SYSTEM: data_pb2.MESSAGE_ROLE_SYSTEM,
    MessageRole.TOOL: data_pb2.MESSAGE_ROLE_TOOL,
}
_ROLES_BACK = {wire: role for role, wire in _ROLES.items()}

_STATUSES: dict[RunStatus, data_pb2.RunStatus.ValueType] = {
    RunStatus.PENDING: data_pb2.RUN_STATUS_PENDING,
    RunStatus.RUNNING: data_pb2.RUN_STATUS_RUNNING,
    RunStatus.COMPLETED: data_pb2.RUN_STATUS_COMPLETED,
    RunStatus.FAILED: data_pb2.RUN_STATUS_FAILED,
    RunStatus.CANCELLED: data_pb2.RUN_STATUS_CANCELLED,
}
_STATUSES_BACK = {wire: status for status, wire in _STATUSES.items()}


def role_to_proto(role: MessageRole | str) -> data_pb2.MessageRole.ValueType:
    try:
        return _ROLES[MessageRole(role)]
    except ValueError:
        raise InvalidInputError("role must be a message role") from None


def role_from_proto(value: data_pb2.MessageRole.ValueType) -> MessageRole:
    role = _ROLES_BACK.get(value)
    if role is None:
        raise InvalidInputError("role must be a message role")
    return role


def status_to_proto(status: RunStatus | str) -> data_pb2.RunStatus.ValueType:
    try:
        return _STATUSES[RunStatus(status)]
    except ValueError:
        raise InvalidInputError("status must be a run status") from None


def status_from_proto(value: data_pb2.RunStatus.ValueType) -> RunStatus:
    status = _STATUSES_BACK.get(value)
    if status is None:
        raise InvalidInputError("status must be a run status")
    return status


# -- scalars ------------------------------------------------------------------------------


def json_to_wire(value: Mapping[str, JsonValue] | None) -> str:
    """Compact JSON text; ``{}`` and None are sent as the empty string."""
    if not value:
        return ""
    try:
        return json.dumps(dict(value), separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError):
        raise InvalidInputError("metadata must be a JSON object") from None


def json_from_wire(text: str, field: str) -> dict[str, Any] | None:
    """The JSON object in ``text`` (None for ""), or InvalidInputError."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidInputError(f"{field} is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidInputError(f"{field} must be a JSON object")
    return value


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def _datetime(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


# -- models -------------------------------------------------------------------------------


def thread_to_proto(thread: Thread) -> data_pb2.Thread:
    return data_pb2.Thread(
        id=thread.id,
        title=thread.title,
        metadata_json=json_to_wire(thread.metadata),
        created_at=_timestamp(thread.created_at),
        updated_at=_timestamp(thread.updated_at),
    )


def thread_from_proto(message: data_pb2.Thread) -> Thread:
    return Thread(
        id=message.id,
        title=message.title,
        metadata=json_from_wire(message.metadata_json, "metadata_json") or {},
        created_at=_datetime(message.created_at),
        updated_at=_datetime(message.updated_at),
    )


def message_to_proto(message: Message) -> data_pb2.Message:
    wire = data_pb2.Message(
        id=message.id,
        thread_id=message.thread_id,
        role=role_to_proto(message.role),
        content=message.content,
        metadata_json=json_to_wire(message.metadata),
        created_at=_timestamp(message.created_at),
    )
    if message.run_id is not None:
        wire.run_id = message.run_id
    return wire


def message_from_proto(wire: data_pb2.Message) -> Message:
    return Message(
        id=wire.id,
        thread_id=wire.thread_id,
        role=role_from_proto(wire.role),
        content=wire.content,
        run_id=wire.run_id if wire.HasField("run_id") else None,
        metadata=json_from_wire(wire.metadata_json, "metadata_json") or {},
        created_at=_datetime(wire.created_at),
    )


def note_to_proto(note: Note) -> data_pb2.Note:
    return data_pb2.Note(
        id=note.id,
        title=note.title,
        content=note.content,
        tags=list(note.tags),
        created_at=_timestamp(note.created_at),
        updated_at=_timestamp(note.updated_at),
    )


def note_from_proto(wire: data_pb2.Note) -> Note:
    return Note(
        id=wire.id,
        title=wire.title,
        content=wire.content,
        tags=tuple(wire.tags),
        created_at=_datetime(wire.created_at),
        updated_at=_datetime(wire.updated_at),
    )


def run_to_proto(run: Run) -> data_pb2.Run:
    wire = data_pb2.Run(
        id=run.id,
        thread_id=run.thread_id,
        agent_name=run.agent_name,
        status=status_to_proto(run.status),
        created_at=_timestamp(run.created_at),
    )
    if run.started_at is not None:
        wire.started_at.CopyFrom(_timestamp(run.started_at))
    if run.finished_at is not None:
        wire.finished_at.CopyFrom(_timestamp(run.finished_at))
    if run.result is not None:
        wire.result = run.result
    if run.error is not None:
        wire.error = run.error
    return wire


def run_from_proto(wire: data_pb2.Run) -> Run:
    return Run(
        id=wire.id,
        thread_id=wire.thread_id,
        agent_name=wire.agent_name,
        status=status_from_proto(wire.status),
        created_at=_datetime(wire.created_at),
        started_at=_datetime(wire.started_at) if wire.HasField("started_at") else None,
        finished_at=_datetime(wire.finished_at) if wire.HasField("finished_at") else None,
        result=wire.result if wire.HasField("result") else None,
        error=wire.error if wire.HasField("error") else None,
    )


# -- errors -------------------------------------------------------------------------------


def _error_classes() -> dict[str, type[DataError]]:
    found: dict[str, type[DataError]] = {}
    pending: list[type[DataError]] = [DataError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.error_code, cls)
        pending.extend(cls.__subclasses__())
    return found


_BY_STATUS: dict[grpc.StatusCode, type[DataError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ScopeLimitExceededError,
    grpc.StatusCode.UNAVAILABLE: DataUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DataUnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: NotAuthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: DataAccessDeniedError,
}


def error_code_of(error: grpc.aio.AioRpcError) -> str | None:
    for key, value in error.trailing_metadata() or ():
        if key == ERROR_CODE_METADATA_KEY and isinstance(value, str):
            return value
    return None


def error_from_rpc_error(error: grpc.aio.AioRpcError) -> DataError:
    """The typed error a failed call stands for (by error code, else by status)."""
    code = error_code_of(error)
    status = error.code()
    cls = _error_classes().get(code) if code is not None else None
    if cls is None or cls.grpc_status_name != status.name:
        cls = _BY_STATUS.get(status, DataError)
    return cls(error.details() or status.name)
