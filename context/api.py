"""The typed interface of the ``context`` package, in one import.

``context`` has no service behind it: its interface is the value type
:class:`UserExecutionContext`, the :class:`UnifiedIDManager`, the current-context scope and
one error hierarchy. This module gathers them under the name every package uses for its
interface (``from context.api import UserExecutionContext``). The protobuf codec lives in
:mod:`context.proto_codec`, which needs the generated ``context_pb2``.
"""

from __future__ import annotations

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

__all__ = [
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
    "get_current_context",
    "get_id_manager",
    "is_valid_id",
    "new_id",
    "new_request_id",
    "new_run_id",
    "new_thread_id",
    "new_user_id",
    "parse_id",
    "validate_id",
]
