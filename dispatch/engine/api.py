"""The typed interface of the tool execution engine: the Protocol, its models and its errors.

Callers depend on :class:`ToolExecutionEngine` only; whether the object behind it is the
in-process :class:`dispatch.engine.engine.LocalToolExecutionEngine` or the gRPC client
:class:`dispatch.engine.grpc_client.GrpcToolEngineClient` is the composition root's choice.

Two kinds of failure, kept apart on purpose:

* A tool call that does not succeed (unknown tool, permission denied, invalid input, rate
  limit, timeout, the handler failing) is a *result*: :meth:`ToolExecutionEngine.execute_tool`
  returns a :class:`ToolExecutionResult` whose ``status`` says what happened. An agent loop
  shows the result to the model and carries on.
* Misuse of the engine itself (registering a duplicate tool or one without a permission
  group, a caller without a verified identity, a malformed request envelope) raises an
  :class:`EngineError` subclass with a stable ``error_code`` and the gRPC status it maps to.

Handlers report an expected failure by raising :class:`ToolFailure` (or
:class:`ToolInputRejected`); its message is shown to the caller. Any other exception from a
handler becomes a generic error result whose message names no internal detail.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from auth.api import AuthResult, Plan, TokenType
from context.api import UserExecutionContext

__all__ = [
    "DEVELOPER_ROLE",
    "ERROR_CODE_METADATA_KEY",
    "MAX_TOOL_NAME_LENGTH",
    "TOOL_NAME_PATTERN",
    "CallerMismatchError",
    "DuplicateToolError",
    "EngineClosedError",
    "EngineError",
    "EngineStats",
    "EngineUnavailableError",
    "InvalidCallerError",
    "InvalidToolDefinitionError",
    "MalformedRequestError",
    "MissingToolGroupError",
    "PermissionGroup",
    "ResultCode",
    "ToolAnnotations",
    "ToolCaller",
    "ToolDefinition",
    "ToolExecutionEngine",
    "ToolExecutionResult",
    "ToolFailure",
    "ToolInputRejected",
    "ToolStatus",
    "UnknownToolGroupError",
    "error_from_code",
    "is_valid_tool_name",
]

#: Tool names: dot-separated lowercase segments, e.g. ``notes.add`` or ``calculator``.
TOOL_NAME_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"
MAX_TOOL_NAME_LENGTH = 64
#: The role that makes an account a developer (besides the ``developer`` plan).
DEVELOPER_ROLE = "developer"
#: Trailing gRPC metadata entry carrying an :class:`EngineError`'s ``error_code``.
ERROR_CODE_METADATA_KEY = "x-ssot-error-code"

_TOOL_NAME_RE = re.compile(TOOL_NAME_PATTERN)


# --------------------------------------------------------------------------------------
# Enumerations
# --------------------------------------------------------------------------------------


class ToolStatus(enum.StrEnum):
    """What became of one tool call."""

    SUCCESS = "success"
    ERROR = "error"
    PERMISSION_DENIED = "permission_denied"
    RATE_LIMITED = "rate_limited"
    INVALID_INPUT = "invalid_input"
    TIMEOUT = "timeout"
    NOT_FOUND = "not_found"


class ResultCode(enum.StrEnum):
    """``error_code`` values the engine itself puts into results.

    Handlers add their own codes (``DIVISION_BY_ZERO``, ``NOTE_NOT_FOUND`` ...) through
    :class:`ToolFailure`.
    """

    TOOL_NOT_FOUND = "TOOL_NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INVALID_INPUT = "INVALID_INPUT"
    INVALID_TOOL_CALL_ID = "INVALID_TOOL_CALL_ID"
    RATE_LIMITED = "RATE_LIMITED"
    RATE_LIMIT_UNAVAILABLE = "RATE_LIMIT_UNAVAILABLE"
    TIMEOUT = "TIMEOUT"
    TOOL_ERROR = "TOOL_ERROR"
    INVALID_TOOL_OUTPUT = "INVALID_TOOL_OUTPUT"
    DATA_ERROR = "DATA_ERROR"


class PermissionGroup(enum.StrEnum):
    """The permission groups a tool can belong to; plans and roles grant groups."""

    BASIC = "basic"
    ANALYTICS = "analytics"
    DATA_MANAGEMENT = "data_management"
    ADVANCED_OPTIMIZATION = "advanced_optimization"
    SYSTEM_MANAGEMENT = "system_management"
    DEVELOPER_TOOLS = "developer_tools"


# --------------------------------------------------------------------------------------
# Errors (misuse of the engine; tool failures are results, see ToolExecutionResult)
# --------------------------------------------------------------------------------------


class EngineError(Exception):
    """Base of every error this package raises on purpose.

    ``error_code`` is stable (logs, API bodies, tests) and travels over gRPC in the trailing
    metadata entry ``x-ssot-error-code``; ``grpc_status_name`` names the ``grpc.StatusCode``
    member an adapter maps the error to, so this module needs no gRPC import.
    """

    error_code: ClassVar[str] = "ENGINE_ERROR"
    grpc_status_name: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidToolDefinitionError(EngineError):
    """A tool cannot be registered: bad name, schema, handler or settings."""

    error_code: ClassVar[str] = "INVALID_TOOL_DEFINITION"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"


class MissingToolGroupError(InvalidToolDefinitionError):
    """A tool declares no permission group; such tools are refused (fail closed)."""

    error_code: ClassVar[str] = "TOOL_GROUP_MISSING"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"


class UnknownToolGroupError(InvalidToolDefinitionError):
    """A tool declares a permission group that no plan or role grants."""

    error_code: ClassVar[str] = "TOOL_GROUP_UNKNOWN"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"


class DuplicateToolError(EngineError):
    """A tool with this name is already registered."""

    error_code: ClassVar[str] = "DUPLICATE_TOOL"
    grpc_status_name: ClassVar[str] = "ALREADY_EXISTS"


class InvalidCallerError(EngineError):
    """No verified identity: the auth result failed, is not an access token, or has no plan."""

    error_code: ClassVar[str] = "INVALID_CALLER"
    grpc_status_name: ClassVar[str] = "UNAUTHENTICATED"


class CallerMismatchError(EngineError):
    """The verified identity and the request's context name different users."""

    error_code: ClassVar[str] = "CALLER_CONTEXT_MISMATCH"
    grpc_status_name: ClassVar[str] = "PERMISSION_DENIED"


class MalformedRequestError(EngineError):
    """A request envelope is malformed (for example its arguments are not JSON text)."""

    error_code: ClassVar[str] = "MALFORMED_REQUEST"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"


class EngineUnavailableError(EngineError):
    """The engine cannot be reached right now (a remote engine is down); retry later."""

    error_code: ClassVar[str] = "ENGINE_UNAVAILABLE"
    grpc_status_name: ClassVar[str] = "UNAVAILABLE"


class EngineClosedError(EngineUnavailableError):
    """The engine was closed; it executes nothing more."""

    error_code: ClassVar[str] = "ENGINE_CLOSED"
    grpc_status_name: ClassVar[str] = "UNAVAILABLE"


_ERROR_CLASSES: tuple[type[EngineError], ...] = (
    EngineError,
    InvalidToolDefinitionError,
    MissingToolGroupError,
    UnknownToolGroupError,
    DuplicateToolError,
    InvalidCallerError,
    CallerMismatchError,
    MalformedRequestError,
    EngineUnavailableError,
    EngineClosedError,
)
_ERROR_CLASS_BY_CODE: Mapping[str, type[EngineError]] = {
    cls.error_code: cls for cls in _ERROR_CLASSES
}


def error_from_code(code: str, message: str) -> EngineError:
    """Rebuild the typed error for a code received over the wire.

    An unknown code (a newer server) becomes the base :class:`EngineError`, so a caller
    always gets an :class:`EngineError`.
    """
    return _ERROR_CLASS_BY_CODE.get(code, EngineError)(message)


# --------------------------------------------------------------------------------------
# Failures raised by handlers (turned into results by the engine)
# --------------------------------------------------------------------------------------


class ToolFailure(Exception):  # noqa: N818 - a failure result, not an error of this package
    """Raised by a handler for an expected failure; becomes a result with ``status``.

    ``message`` is shown to the caller, so it may only mention the caller's own input and
    data. Any other exception from a handler becomes a generic ``TOOL_ERROR`` result.
    """

    status: ClassVar[ToolStatus] = ToolStatus.ERROR

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


class ToolInputRejected(ToolFailure):
    """The arguments passed the schema but the tool refuses them (``invalid_input``)."""

    status: ClassVar[ToolStatus] = ToolStatus.INVALID_INPUT


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class ToolAnnotations(_Model):
    """Hints about a tool's behaviour, as in the Model Context Protocol.

    Defaults are MCP's (assume the worst): not read-only, destructive, not idempotent,
    open-world. Hints describe; they grant nothing.
    """

    read_only_hint: bool = Field(default=False, alias="readOnlyHint")
    destructive_hint: bool = Field(default=True, alias="destructiveHint")
    idempotent_hint: bool = Field(default=False, alias="idempotentHint")
    open_world_hint: bool = Field(default=True, alias="openWorldHint")


class ToolDefinition(_Model):
    """A tool described the MCP way, plus the permission ``group`` it belongs to.

    ``input_schema`` is a JSON Schema (Draft 2020-12) object; tools registered through
    :class:`dispatch.engine.registry.Tool` get it generated from their pydantic input model.
    ``group`` is a plain string so that a definition naming an unknown group can exist and
    be refused rather than fail to parse; see :mod:`dispatch.engine.permissions`.
    """

    name: str = Field(max_length=MAX_TOOL_NAME_LENGTH, pattern=TOOL_NAME_PATTERN)
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=4000)
    input_schema: dict[str, JsonValue] = Field(alias="inputSchema")
    output_schema: dict[str, JsonValue] | None = Field(default=None, alias="outputSchema")
    annotations: ToolAnnotations = ToolAnnotations()
    group: str | None = None

    def to_mcp(self) -> dict[str, JsonValue]:
        """The MCP ``tools/list`` form (camelCase keys), with ``group`` kept as an extra."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def is_valid_tool_name(name: object) -> bool:
    """Whether ``name`` is a well-formed tool name (never raises)."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_TOOL_NAME_LENGTH
        and _TOOL_NAME_RE.fullmatch(name) is not None
    )


class ToolCaller(_Model):
    """Who calls a tool: the request's context plus the entitlements of a verified token.

    Build it with :meth:`from_auth_result` from the :class:`~auth.api.AuthResult` of a
    verified access token, never from fields of a request body. ``is_developer`` is true
    for the ``developer`` plan and for accounts with the ``developer`` role.
    """

    context: UserExecutionContext
    plan: Plan
    roles: tuple[str, ...] = ()
    permissions: tuple[str, ...] = ()
    is_developer: bool = False

    @property
    def user_id(self) -> str:
        return self.context.user_id

    @classmethod
    def from_auth_result(cls, ctx: UserExecutionContext, auth: AuthResult) -> ToolCaller:
        """The caller for ``ctx`` as verified by ``auth``.

        Raises :class:`InvalidCallerError` unless ``auth`` is a successful access-token
        result with a user and a plan, and :class:`CallerMismatchError` when it names a
        different user than ``ctx``.
        """
        if not auth.success or auth.user_id is None:
            raise InvalidCallerError("the caller's token was not verified")
        if auth.token_type is not TokenType.ACCESS:
            raise InvalidCallerError("tools are called with a user's access token")
        if auth.plan is None:
            raise InvalidCallerError("the verified token carries no plan")
        if auth.user_id != ctx.user_id:
            raise CallerMismatchError("the request context belongs to another user than the token")
        return cls(
            context=ctx,
            plan=auth.plan,
            roles=auth.roles,
            permissions=auth.permissions,
            is_developer=auth.plan is Plan.DEVELOPER or DEVELOPER_ROLE in auth.roles,
        )


class ToolExecutionResult(_Model):
    """The outcome of one tool call; failures are results too (see ``status``).

    ``result`` is the handler's JSON value on success and ``None`` otherwise.
    ``error_code`` and ``error_message`` are set for every status but ``success``.
    ``retry_after_seconds`` is set for ``rate_limited``; ``upgrade_plans`` lists the plans
    that would allow a ``permission_denied`` call (empty when no plan change helps).
    """

    status: ToolStatus
    tool_name: str
    tool_call_id: str
    result: JsonValue = None
    error_code: str | None = None
    error_message: str | None = None
    execution_time_ms: float = Field(ge=0)
    retry_after_seconds: float | None = Field(default=None, ge=0)
    upgrade_plans: tuple[Plan, ...] = ()

    @property
    def success(self) -> bool:
        return self.status is ToolStatus.SUCCESS


class EngineStats(_Model):
    """Engine-wide totals since start: counts only, nothing about any single user."""

    started_at: datetime
    uptime_seconds: float = Field(ge=0)
    tools_registered: int = Field(ge=0)
    calls_total: int = Field(ge=0)
    calls_by_status: dict[str, int] = Field(default_factory=dict)
    calls_by_tool: dict[str, int] = Field(default_factory=dict)
    #: Data scopes currently open across the data factory (a total, no user ids).
    live_data_scopes: int | None = None


# --------------------------------------------------------------------------------------
# Protocol
# --------------------------------------------------------------------------------------


@runtime_checkable
class ToolExecutionEngine(Protocol):
    """Executes tool calls for verified callers.

    Implemented in-process by ``dispatch.engine.engine.LocalToolExecutionEngine`` and over
    gRPC by ``dispatch.engine.grpc_client.GrpcToolEngineClient``; both return the same
    results. Over gRPC the server decides the caller from the verified token; the
    ``caller`` argument only tells the client which request it acts for.
    """

    async def list_tools(
        self, caller: ToolCaller, *, include_unavailable: bool = False
    ) -> Sequence[ToolDefinition]:
        """The tools ``caller`` may call, sorted by name (all tools with
        ``include_unavailable``)."""
        ...

    async def execute_tool(
        self,
        caller: ToolCaller,
        tool_name: str,
        arguments: Mapping[str, object] | None = None,
        *,
        tool_call_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> ToolExecutionResult:
        """Run one call: exists → permission → input schema → rate limit → timeout →
        handler → usage record. Never raises for a failing call; see ToolExecutionResult.

        ``tool_call_id`` (generated when omitted) names the call in results, logs and
        events; ``timeout_seconds`` may shorten, never lengthen, the tool's own timeout.
        """
        ...
