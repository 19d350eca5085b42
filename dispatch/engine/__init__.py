"""``dispatch.engine``: the ToolExecutionEngine.

Executes one tool call for a verified caller: the tool exists → the caller's plan and roles
grant its permission group → the input validates against its JSON Schema → the caller is
within the per-user rate limits → the handler runs under a timeout in a data scope of the
caller's own → the usage is recorded. Failures are results (:class:`ToolExecutionResult`),
not exceptions.

The interface is in :mod:`dispatch.engine.api`; the in-process implementation is
:class:`dispatch.engine.engine.LocalToolExecutionEngine`; gRPC adapters are in
:mod:`dispatch.engine.grpc_server` and :mod:`dispatch.engine.grpc_client`.
"""

from __future__ import annotations

from dispatch.engine.api import (
    CallerMismatchError,
    DuplicateToolError,
    EngineClosedError,
    EngineError,
    EngineStats,
    EngineUnavailableError,
    InvalidCallerError,
    InvalidToolDefinitionError,
    MalformedRequestError,
    MissingToolGroupError,
    PermissionGroup,
    ResultCode,
    ToolAnnotations,
    ToolCaller,
    ToolDefinition,
    ToolExecutionEngine,
    ToolExecutionResult,
    ToolFailure,
    ToolInputRejected,
    ToolStatus,
    UnknownToolGroupError,
)
from dispatch.engine.builtin_tools import builtin_tools, register_builtin_tools
from dispatch.engine.engine import LocalToolExecutionEngine
from dispatch.engine.permissions import PermissionDecision, check_tool_permission
from dispatch.engine.rate_limits import RateLimitPolicy, ToolRateLimiter
from dispatch.engine.registry import Tool, ToolInput, ToolInvocation, ToolRegistry, define_tool

__all__ = [
    "CallerMismatchError",
    "DuplicateToolError",
    "EngineClosedError",
    "EngineError",
    "EngineStats",
    "EngineUnavailableError",
    "InvalidCallerError",
    "InvalidToolDefinitionError",
    "LocalToolExecutionEngine",
    "MalformedRequestError",
    "MissingToolGroupError",
    "PermissionDecision",
    "PermissionGroup",
    "RateLimitPolicy",
    "ResultCode",
    "Tool",
    "ToolAnnotations",
    "ToolCaller",
    "ToolDefinition",
    "ToolExecutionEngine",
    "ToolExecutionResult",
    "ToolFailure",
    "ToolInput",
    "ToolInputRejected",
    "ToolInvocation",
    "ToolRateLimiter",
    "ToolRegistry",
    "ToolStatus",
    "UnknownToolGroupError",
    "builtin_tools",
    "check_tool_permission",
    "define_tool",
    "register_builtin_tools",
]
