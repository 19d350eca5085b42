"""Conversions between the engine's pydantic models and ``ssot.engine.v1`` messages.

Shared by the gRPC server and client so both sides agree on every field. JSON payloads
travel as compact JSON text; NaN and Infinity are refused on the way in and out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from pydantic import JsonValue, ValidationError

from auth.api import Plan
from dispatch.engine import engine_pb2
from dispatch.engine.api import (
    EngineError,
    MalformedRequestError,
    ToolAnnotations,
    ToolDefinition,
    ToolExecutionResult,
    ToolStatus,
)

__all__ = [
    "MAX_JSON_TEXT_BYTES",
    "definition_from_proto",
    "definition_to_proto",
    "dumps_json",
    "loads_json",
    "result_from_proto",
    "result_to_proto",
    "status_from_proto",
    "status_to_proto",
]

#: Largest JSON text accepted from the wire (arguments, schemas, results).
MAX_JSON_TEXT_BYTES = 2 * 1024 * 1024

_STATUS_TO_PROTO: Mapping[ToolStatus, engine_pb2.ToolStatus.ValueType] = {
    ToolStatus.SUCCESS: engine_pb2.TOOL_STATUS_SUCCESS,
    ToolStatus.ERROR: engine_pb2.TOOL_STATUS_ERROR,
    ToolStatus.PERMISSION_DENIED: engine_pb2.TOOL_STATUS_PERMISSION_DENIED,
    ToolStatus.RATE_LIMITED: engine_pb2.TOOL_STATUS_RATE_LIMITED,
    ToolStatus.INVALID_INPUT: engine_pb2.TOOL_STATUS_INVALID_INPUT,
    ToolStatus.TIMEOUT: engine_pb2.TOOL_STATUS_TIMEOUT,
    ToolStatus.NOT_FOUND: engine_pb2.TOOL_STATUS_NOT_FOUND,
}
_STATUS_FROM_PROTO: Mapping[int, ToolStatus] = {
    value: status for status, value in _STATUS_TO_PROTO.items()
}


def _reject_constant(name: str) -> object:
    raise ValueError(f"JSON constant {name} is not allowed")


def dumps_json(value: object) -> str:
    """Compact JSON text; raises ``ValueError``/``TypeError`` for non-JSON values."""
    return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def loads_json(text: str, *, what: str) -> JsonValue:
    """Parse JSON text from the wire; raises :class:`MalformedRequestError` (naming
    ``what``) for oversized, invalid or NaN/Infinity-bearing text."""
    if len(text) > MAX_JSON_TEXT_BYTES or len(text.encode("utf-8", "surrogatepass")) > (
        MAX_JSON_TEXT_BYTES
    ):
        raise MalformedRequestError(f"{what} is larger than {MAX_JSON_TEXT_BYTES} bytes")
    try:
        value: JsonValue = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise MalformedRequestError(f"{what} is not valid JSON text") from None
    return value


def status_to_proto(status: ToolStatus) -> engine_pb2.ToolStatus.ValueType:
    return _STATUS_TO_PROTO[status]


def status_from_proto(value: int) -> ToolStatus:
    status = _STATUS_FROM_PROTO.get(value)
    if status is None:
        raise EngineError(f"the server sent an unknown tool status ({value})")
    return status


def definition_to_proto(definition: ToolDefinition) -> engine_pb2.ToolDefinition:
    annotations = definition.annotations
    message = engine_pb2.ToolDefinition(
        name=definition.name,
        title=definition.title,
        description=definition.description,
        input_schema_json=dumps_json(definition.input_schema),
        annotations=engine_pb2.ToolAnnotations(
            read_only_hint=annotations.read_only_hint,
            destructive_hint=annotations.destructive_hint,
            idempotent_hint=annotations.idempotent_hint,
            open_world_hint=annotations.open_world_hint,
        ),
    )
    if definition.output_schema is not None:
        message.output_schema_json = dumps_json(definition.output_schema)
    if definition.group is not None:
        message.group = definition.group
    return message


def _schema(text: str, what: str) -> dict[str, JsonValue]:
    value = loads_json(text, what=what)
    if not isinstance(value, dict):
        raise MalformedRequestError(f"{what} is not a JSON object")
    return value


def definition_from_proto(message: engine_pb2.ToolDefinition) -> ToolDefinition:
    """Raises :class:`EngineError` when the message is not a valid definition."""
    try:
        return ToolDefinition(
            name=message.name,
            title=message.title,
            description=message.description,
            input_schema=_schema(message.input_schema_json, "input_schema_json"),
            output_schema=(
                _schema(message.output_schema_json, "output_schema_json")
                if message.HasField("output_schema_json")
                else None
            ),
            annotations=ToolAnnotations(
                read_only_hint=message.annotations.read_only_hint,
                destructive_hint=message.annotations.destructive_hint,
                idempotent_hint=message.annotations.idempotent_hint,
                open_world_hint=message.annotations.open_world_hint,
            ),
            group=message.group if message.HasField("group") else None,
        )
    except (ValidationError, MalformedRequestError) as exc:
        raise EngineError(f"the server sent an invalid tool definition: {exc}"[:300]) from None


def result_to_proto(result: ToolExecutionResult) -> engine_pb2.ExecuteToolResponse:
    message = engine_pb2.ExecuteToolResponse(
        status=status_to_proto(result.status),
        tool_name=result.tool_name,
        tool_call_id=result.tool_call_id,
        result_json=dumps_json(result.result),
        execution_time_ms=result.execution_time_ms,
        upgrade_plans=[plan.value for plan in result.upgrade_plans],
    )
    if result.error_code is not None:
        message.error_code = result.error_code
    if result.error_message is not None:
        message.error_message = result.error_message
    if result.retry_after_seconds is not None:
        message.retry_after_seconds = result.retry_after_seconds
    return message


def result_from_proto(message: engine_pb2.ExecuteToolResponse) -> ToolExecutionResult:
    """Raises :class:`EngineError` when the message is not a valid result."""
    try:
        return ToolExecutionResult(
            status=status_from_proto(message.status),
            tool_name=message.tool_name,
            tool_call_id=message.tool_call_id,
            result=loads_json(message.result_json or "null", what="result_json"),
            error_code=message.error_code if message.HasField("error_code") else None,
            error_message=message.error_message if message.HasField("error_message") else None,
            execution_time_ms=message.execution_time_ms,
            retry_after_seconds=(
                message.retry_after_seconds if message.HasField("retry_after_seconds") else None
            ),
            upgrade_plans=tuple(Plan(plan) for plan in message.upgrade_plans),
        )
    except (ValidationError, MalformedRequestError, ValueError) as exc:
        raise EngineError(f"the server sent an invalid tool result: {exc}"[:300]) from None
