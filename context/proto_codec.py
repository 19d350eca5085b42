"""Protobuf form of a context, and the ``x-ssot-context`` gRPC metadata codec.

:func:`to_proto` / :func:`from_proto` convert between :class:`UserExecutionContext` and
``ssot.context.v1.UserExecutionContext``. :func:`encode_context_metadata` /
:func:`decode_context_metadata` turn a context into the ASCII metadata value a gRPC client
interceptor sends (base64url without padding of the serialized message) and back.

The decoder faces untrusted input, so it is strict and cheap to refuse: the size is checked
before anything is decoded, only the canonical base64url alphabet and encoding are accepted,
unknown protobuf fields are refused, every field is re-validated, and every failure is a
:class:`ContextCodecError`, never another exception type.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta
from typing import cast

from google.protobuf import message as protobuf_message
from google.protobuf import unknown_fields

from context import context_pb2
from context.errors import ContextCodecError, ContextError, describe_value
from context.execution_context import UserExecutionContext
from context.metadata import dumps_json_object, loads_json_object

__all__ = [
    "CONTEXT_METADATA_KEY",
    "GRPC_SERVER_METADATA_OPTIONS",
    "MAX_ENCODED_CONTEXT_BYTES",
    "decode_context_metadata",
    "encode_context_metadata",
    "from_proto",
    "to_proto",
]

#: gRPC metadata key carrying the caller's context (ASCII value, hence no ``-bin`` suffix).
CONTEXT_METADATA_KEY = "x-ssot-context"
#: Largest accepted metadata value. Every valid context encodes to well below this.
MAX_ENCODED_CONTEXT_BYTES = 8 * 1024
#: Options for every gRPC server that reads ``x-ssot-context``. gRPC's default metadata
#: limits (8 KiB soft, 16 KiB hard, for all request metadata together) would refuse an
#: oversized context at random with RESOURCE_EXHAUSTED before the codec sees it; with this
#: budget the codec's own bound decides, always with a typed INVALID_ARGUMENT.
GRPC_SERVER_METADATA_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_metadata_size", 64 * 1024),
    ("grpc.absolute_max_metadata_size", 64 * 1024),
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_NANOS = 999_999_999
_BASE64URL = re.compile(rb"[A-Za-z0-9_-]*")


def to_proto(ctx: UserExecutionContext) -> context_pb2.UserExecutionContext:
    """The protobuf message for ``ctx`` (exact: ``from_proto(to_proto(c)) == c``)."""
    message = context_pb2.UserExecutionContext(
        user_id=ctx.user_id,
        thread_id=ctx.thread_id,
        run_id=ctx.run_id,
        request_id=ctx.request_id,
        parent_request_id=ctx.parent_request_id,
        operation_depth=ctx.operation_depth,
        websocket_client_id=ctx.websocket_client_id,
        agent_context_json=dumps_json_object(ctx.agent_context) if ctx.agent_context else "",
        audit_metadata_json=dumps_json_object(ctx.audit_metadata) if ctx.audit_metadata else "",
    )
    since_epoch = ctx.created_at - _EPOCH
    message.created_at.seconds = since_epoch.days * 86_400 + since_epoch.seconds
    message.created_at.nanos = since_epoch.microseconds * 1_000
    return message


def _has_unknown_fields(message: protobuf_message.Message) -> bool:
    if len(unknown_fields.UnknownFieldSet(message)) > 0:
        return True
    return any(
        isinstance(value, protobuf_message.Message) and _has_unknown_fields(value)
        for _, value in message.ListFields()
    )


def _created_at(message: context_pb2.UserExecutionContext) -> datetime:
    if not message.HasField("created_at"):
        raise ContextCodecError("created_at is missing")
    seconds, nanos = message.created_at.seconds, message.created_at.nanos
    if not 0 <= nanos <= _MAX_NANOS:
        raise ContextCodecError("created_at.nanos is outside 0..999999999")
    if nanos % 1_000:
        raise ContextCodecError("created_at has sub-microsecond precision")
    try:
        return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1_000)
    except OverflowError:
        raise ContextCodecError("created_at is outside the representable range") from None


def from_proto(message: context_pb2.UserExecutionContext) -> UserExecutionContext:
    """Rebuild and fully re-validate a context from its protobuf message.

    Raises :class:`ContextCodecError` for encoding faults (unknown fields, bad timestamp,
    bad JSON) and :class:`~context.errors.InvalidContextError` for invalid values.
    """
    if not isinstance(cast(object, message), context_pb2.UserExecutionContext):
        raise ContextCodecError(
            f"expected a ssot.context.v1.UserExecutionContext, got {describe_value(message)}"
        )
    if _has_unknown_fields(message):
        raise ContextCodecError("the message has fields unknown to ssot.context.v1")
    return UserExecutionContext(
        user_id=message.user_id,
        thread_id=message.thread_id,
        run_id=message.run_id,
        request_id=message.request_id,
        parent_request_id=(
            message.parent_request_id if message.HasField("parent_request_id") else None
        ),
        operation_depth=message.operation_depth,
        created_at=_created_at(message),
        websocket_client_id=(
            message.websocket_client_id if message.HasField("websocket_client_id") else None
        ),
        agent_context=loads_json_object(message.agent_context_json, field="agent_context"),
        audit_metadata=loads_json_object(message.audit_metadata_json, field="audit_metadata"),
    )


def encode_context_metadata(ctx: UserExecutionContext) -> str:
    """The ``x-ssot-context`` metadata value for ``ctx``: unpadded base64url of the proto."""
    data = to_proto(ctx).SerializeToString(deterministic=True)
    encoded = base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
    if len(encoded) > MAX_ENCODED_CONTEXT_BYTES:
        raise ContextCodecError(
            f"the encoded context is larger than {MAX_ENCODED_CONTEXT_BYTES} bytes"
        )
    return encoded


def _decode_base64url(value: object) -> bytes:
    if isinstance(value, str):
        try:
            raw = value.encode("ascii")
        except UnicodeEncodeError:
            raise ContextCodecError("the context metadata value is not ASCII") from None
    elif isinstance(value, bytes):
        raw = value
    else:
        raise ContextCodecError(
            f"the context metadata value must be str or bytes, got {describe_value(value)}"
        )
    if not raw:
        raise ContextCodecError("the context metadata value is empty")
    if _BASE64URL.fullmatch(raw) is None:
        raise ContextCodecError(
            "the context metadata value has characters outside the base64url alphabet"
        )
    if len(raw) % 4 == 1:
        raise ContextCodecError("the context metadata value has an impossible base64 length")
    try:
        data = base64.b64decode(raw + b"=" * (-len(raw) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ContextCodecError("the context metadata value is not valid base64url") from None
    # Only the canonical spelling: unused trailing bits must be zero.
    if base64.urlsafe_b64encode(data).rstrip(b"=") != raw:
        raise ContextCodecError("the context metadata value is not canonical base64url")
    return data


def decode_context_metadata(value: str | bytes) -> UserExecutionContext:
    """Decode an ``x-ssot-context`` metadata value; any fault raises ContextCodecError."""
    if isinstance(value, str | bytes) and len(value) > MAX_ENCODED_CONTEXT_BYTES:
        raise ContextCodecError(
            f"the context metadata value is larger than {MAX_ENCODED_CONTEXT_BYTES} bytes"
        )
    data = _decode_base64url(value)
    message = context_pb2.UserExecutionContext()
    try:
        message.ParseFromString(data)
    except Exception:
        # DecodeError in practice; any protobuf runtime failure is the same fault to us.
        raise ContextCodecError("the context metadata value is not a valid protobuf") from None
    try:
        return from_proto(message)
    except ContextCodecError:
        raise
    except ContextError as exc:
        raise ContextCodecError(f"the transmitted context is invalid: {exc.message}") from exc
    except Exception as exc:
        # Not expected; the contract is that a hostile value yields ContextCodecError only.
        raise ContextCodecError("the transmitted context could not be decoded") from exc
