"""``context``: the SSOT of per-request identity.

:class:`UserExecutionContext` (immutable identity of one request of one user),
:class:`UnifiedIDManager` (typed, time-ordered, collision-free IDs), the current context of
a task (:func:`context_scope`, :func:`current_context`) and the protobuf / gRPC metadata
codec (:mod:`context.proto_codec`).

The codec names are loaded on first use, so importing this package does not need the
generated protobuf module until the codec is actually used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from context.current import ContextScope, context_scope, current_context, get_current_context
from context.errors import (
    ContextCodecError,
    ContextDepthExceededError,
    ContextError,
    InvalidContextError,
    InvalidIDError,
    NoCurrentContextError,
)
from context.execution_context import MAX_OPERATION_DEPTH, UserExecutionContext
from context.ids import (
    IDKind,
    ParsedID,
    UnifiedIDManager,
    get_id_manager,
    is_valid_id,
    new_id,
    new_request_id,
    new_run_id,
    new_thread_id,
    new_user_id,
    parse_id,
    validate_id,
)
from context.metadata import JSONObject, JSONValue

if TYPE_CHECKING:
    from context.proto_codec import (
        CONTEXT_METADATA_KEY,
        MAX_ENCODED_CONTEXT_BYTES,
        decode_context_metadata,
        encode_context_metadata,
        from_proto,
        to_proto,
    )

__all__ = [
    "CONTEXT_METADATA_KEY",
    "MAX_ENCODED_CONTEXT_BYTES",
    "MAX_OPERATION_DEPTH",
    "ContextCodecError",
    "ContextDepthExceededError",
    "ContextError",
    "ContextScope",
    "IDKind",
    "InvalidContextError",
    "InvalidIDError",
    "JSONObject",
    "JSONValue",
    "NoCurrentContextError",
    "ParsedID",
    "UnifiedIDManager",
    "UserExecutionContext",
    "context_scope",
    "current_context",
    "decode_context_metadata",
    "encode_context_metadata",
    "from_proto",
    "get_current_context",
    "get_id_manager",
    "is_valid_id",
    "new_id",
    "new_request_id",
    "new_run_id",
    "new_thread_id",
    "new_user_id",
    "parse_id",
    "to_proto",
    "validate_id",
]

_CODEC_NAMES = frozenset(
    {
        "CONTEXT_METADATA_KEY",
        "MAX_ENCODED_CONTEXT_BYTES",
        "decode_context_metadata",
        "encode_context_metadata",
        "from_proto",
        "to_proto",
    }
)


def __getattr__(name: str) -> object:
    if name in _CODEC_NAMES:
        value: object = getattr(importlib.import_module("context.proto_codec"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'context' has no attribute {name!r}")
