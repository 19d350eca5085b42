"""The typed interface of the LLM package: the Protocol, its models and its errors.

Callers depend on :class:`LLMManager` only. The in-process implementation is built per
request by :class:`dispatch.llm.manager.LLMManagerFactory` (one manager per
``UserExecutionContext``); :class:`dispatch.llm.grpc_client.GrpcLLMClient` implements the
same Protocol over gRPC. Which one a caller holds is the composition root's choice.

Every failure is an :class:`LLMError` subclass with a stable ``error_code`` and the name of
the ``grpc.StatusCode`` member it maps to (``grpc_status_name``), so this module needs no
gRPC import. Errors are raised, never folded into apology text: a caller always learns that
a completion did not happen, and why.
"""

from __future__ import annotations

import enum
import re
from collections.abc import AsyncIterator, Mapping
from datetime import date, datetime
from typing import Annotated, Any, ClassVar, Literal, Protocol, Self, TypeVar, runtime_checkable

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "MAX_MESSAGES",
    "MAX_REQUEST_CHARS",
    "MAX_TOOLS",
    "TOOL_NAME_PATTERN",
    "BudgetStatus",
    "ChatMessage",
    "Completion",
    "CompletionRequest",
    "ConfigUsage",
    "FinishReason",
    "InvalidLLMRequestError",
    "InvalidServiceResponseError",
    "LLMConfig",
    "LLMError",
    "LLMHealth",
    "LLMManager",
    "ProviderRateLimitedError",
    "ProviderState",
    "ProviderStatus",
    "ProviderUnavailableError",
    "ResponseFormat",
    "Role",
    "StreamChunk",
    "StreamInterruptedError",
    "StructuredOutputError",
    "TokenBudgetExceededError",
    "TokenUsage",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "ToolSpec",
    "UnknownConfigError",
    "UsageReport",
    "UsageTotals",
    "error_class_for_code",
]

# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class LLMError(Exception):
    """Base of every error this package raises on purpose.

    ``error_code`` is stable (clients switch on it; it travels over gRPC in trailing
    metadata so a remote caller gets the same subclass back). Messages never contain an
    API key, a prompt, or anything of another user.
    """

    error_code: ClassVar[str] = "LLM_ERROR"
    grpc_status_name: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidLLMRequestError(LLMError):
    """The request is malformed, too large, or a provider rejected it as invalid (HTTP 4xx).

    Not retried and not sent to another provider: the request itself is at fault.
    """

    error_code: ClassVar[str] = "INVALID_LLM_REQUEST"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"


class UnknownConfigError(LLMError):
    """The request names an LLM configuration that does not exist."""

    error_code: ClassVar[str] = "UNKNOWN_LLM_CONFIG"
    grpc_status_name: ClassVar[str] = "NOT_FOUND"


class TokenBudgetExceededError(LLMError):
    """The user's daily token budget cannot cover this request.

    ``resets_at`` is the next UTC midnight, when the budget starts afresh.
    """

    error_code: ClassVar[str] = "TOKEN_BUDGET_EXCEEDED"
    grpc_status_name: ClassVar[str] = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, resets_at: datetime | None = None) -> None:
        super().__init__(message)
        self.resets_at = resets_at


class ProviderUnavailableError(LLMError):
    """Every provider of the configuration's chain failed or is cooling down."""

    error_code: ClassVar[str] = "LLM_PROVIDER_UNAVAILABLE"
    grpc_status_name: ClassVar[str] = "UNAVAILABLE"


class StreamInterruptedError(ProviderUnavailableError):
    """A provider failed after a stream had started; what was sent cannot be taken back,
    so the stream ends with this error instead of switching providers mid-answer."""

    error_code: ClassVar[str] = "LLM_STREAM_INTERRUPTED"
    grpc_status_name: ClassVar[str] = "UNAVAILABLE"


class ProviderRateLimitedError(LLMError):
    """Every provider of the chain is rate limiting us for longer than we are willing to wait.

    ``retry_after`` is the shortest wait (seconds) a provider asked for, when known.
    """

    error_code: ClassVar[str] = "LLM_PROVIDER_RATE_LIMITED"
    grpc_status_name: ClassVar[str] = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StructuredOutputError(LLMError):
    """The model's output did not validate against the requested pydantic model, even after
    one repair attempt. ``errors`` summarises the last validation failure."""

    error_code: ClassVar[str] = "LLM_STRUCTURED_OUTPUT_INVALID"
    grpc_status_name: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, errors: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.errors = errors


class InvalidServiceResponseError(LLMError):
    """The LLM service (over gRPC) sent a message that does not form a valid result."""

    error_code: ClassVar[str] = "LLM_INVALID_SERVICE_RESPONSE"
    grpc_status_name: ClassVar[str] = "INTERNAL"


_ERROR_CLASSES: tuple[type[LLMError], ...] = (
    LLMError,
    InvalidLLMRequestError,
    UnknownConfigError,
    TokenBudgetExceededError,
    ProviderUnavailableError,
    StreamInterruptedError,
    ProviderRateLimitedError,
    StructuredOutputError,
    InvalidServiceResponseError,
)
_ERROR_BY_CODE: Mapping[str, type[LLMError]] = {cls.error_code: cls for cls in _ERROR_CLASSES}


def error_class_for_code(code: str) -> type[LLMError]:
    """The public error class for a stable ``error_code`` (``LLMError`` when unknown)."""
    return _ERROR_BY_CODE.get(code, LLMError)


# --------------------------------------------------------------------------------------
# Messages, tools and requests
# --------------------------------------------------------------------------------------

#: Tool names: what the tool engine registers (``notes.add``); dots allowed.
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$"
_TOOL_NAME = re.compile(TOOL_NAME_PATTERN)
#: Bounds that keep one request from monopolising a provider or the process.
MAX_MESSAGES = 512
MAX_TOOLS = 128
MAX_REQUEST_CHARS = 1_000_000
_MAX_SCHEMA_CHARS = 64_000


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
ToolChoice = Literal["auto", "none", "required"]
ResponseFormat = Literal["text", "json"]

_Frozen = ConfigDict(frozen=True, extra="forbid")


class ToolCall(BaseModel):
    """One function call the model asks for. ``arguments`` is the decoded JSON object."""

    model_config = _Frozen

    id: Annotated[str, Field(min_length=1, max_length=128)]
    name: Annotated[str, Field(pattern=TOOL_NAME_PATTERN)]
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolSpec(BaseModel):
    """A tool offered to the model: name, description, JSON Schema of its arguments."""

    model_config = _Frozen

    name: Annotated[str, Field(pattern=TOOL_NAME_PATTERN)]
    description: Annotated[str, Field(max_length=4096)] = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    @field_validator("parameters")
    @classmethod
    def _parameters_are_object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            raise ValueError('tool parameters must be a JSON Schema with "type": "object"')
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(
                f"tool parameters are not a valid JSON Schema: {exc.message}"
            ) from None
        return value


class ChatMessage(BaseModel):
    """One message of a conversation.

    ``system`` and ``user`` messages carry ``content``; an ``assistant`` message carries
    content, tool calls, or both; a ``tool`` message answers one tool call (``tool_call_id``)
    with its result as text (usually JSON).
    """

    model_config = _Frozen

    role: Role
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: Annotated[str | None, Field(min_length=1, max_length=128)] = None
    name: Annotated[str | None, Field(pattern=TOOL_NAME_PATTERN)] = None

    @model_validator(mode="after")
    def _shape_fits_role(self) -> Self:
        if self.tool_calls and self.role is not Role.ASSISTANT:
            raise ValueError("only assistant messages carry tool_calls")
        if self.role is Role.TOOL:
            if self.tool_call_id is None:
                raise ValueError("a tool message needs the tool_call_id it answers")
            if self.content is None:
                raise ValueError("a tool message needs content (the tool result)")
        elif self.tool_call_id is not None:
            raise ValueError("only tool messages carry tool_call_id")
        if self.role in (Role.SYSTEM, Role.USER) and self.content is None:
            raise ValueError(f"a {self.role.value} message needs content")
        if self.role is Role.ASSISTANT and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self

    @classmethod
    def system(cls, content: str) -> ChatMessage:
        return cls(role=Role.SYSTEM, content=content)

    @classmethod
    def user(cls, content: str) -> ChatMessage:
        return cls(role=Role.USER, content=content)

    @classmethod
    def assistant(cls, content: str | None, tool_calls: tuple[ToolCall, ...] = ()) -> ChatMessage:
        return cls(role=Role.ASSISTANT, content=content, tool_calls=tool_calls)

    @classmethod
    def tool(cls, tool_call_id: str, content: str, name: str | None = None) -> ChatMessage:
        return cls(role=Role.TOOL, tool_call_id=tool_call_id, content=content, name=name)


class CompletionRequest(BaseModel):
    """What a caller asks for. ``config`` names an :class:`LLMConfig`.

    ``temperature`` and ``max_tokens`` override the configuration's values for this call
    (``max_tokens`` may only lower it: the configuration's value is the ceiling the budget
    estimate relies on). ``response_format="json"`` asks for a JSON object, validated by
    ``response_schema`` when given. ``use_cache=False`` bypasses the response cache.
    """

    model_config = _Frozen

    messages: Annotated[tuple[ChatMessage, ...], Field(min_length=1, max_length=MAX_MESSAGES)]
    tools: Annotated[tuple[ToolSpec, ...], Field(max_length=MAX_TOOLS)] = ()
    tool_choice: ToolChoice = "auto"
    config: Annotated[str, Field(min_length=1, max_length=64)] = "default"
    temperature: Annotated[float | None, Field(ge=0.0, le=2.0)] = None
    max_tokens: Annotated[int | None, Field(ge=1)] = None
    response_format: ResponseFormat = "text"
    response_schema: dict[str, Any] | None = None
    use_cache: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [tool.name for tool in self.tools]
        if len(names) != len(set(names)):
            raise ValueError("tool names must be unique within a request")
        if self.tool_choice == "required" and not self.tools:
            raise ValueError('tool_choice "required" needs at least one tool')
        size = sum(len(message.content or "") for message in self.messages)
        if size > MAX_REQUEST_CHARS:
            raise ValueError(f"the conversation is longer than {MAX_REQUEST_CHARS} characters")
        if self.response_schema is not None:
            if self.response_format != "json":
                raise ValueError('response_schema needs response_format "json"')
            if len(repr(self.response_schema)) > _MAX_SCHEMA_CHARS:
                raise ValueError("response_schema is too large")
            try:
                jsonschema.Draft202012Validator.check_schema(self.response_schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(
                    f"response_schema is not a valid JSON Schema: {exc.message}"
                ) from None
        return self


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


class TokenUsage(BaseModel):
    model_config = _Frozen

    prompt_tokens: Annotated[int, Field(ge=0)] = 0
    completion_tokens: Annotated[int, Field(ge=0)] = 0
    total_tokens: Annotated[int, Field(ge=0)] = 0

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> TokenUsage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class Completion(BaseModel):
    """One finished answer. ``reasoning`` is the provider's visible thinking trace (the
    local provider writes one; remote providers usually do not). ``cached`` is true when the
    answer came from this user's response cache (then ``latency_ms`` is the lookup time)."""

    model_config = _Frozen

    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason = "stop"
    usage: TokenUsage = Field(default_factory=TokenUsage)
    provider: str
    model: str
    config: str = "default"
    cached: bool = False
    latency_ms: Annotated[float, Field(ge=0.0)] = 0.0
    reasoning: str | None = None


class ToolCallDelta(BaseModel):
    """A piece of a streamed tool call. Pieces with the same ``index`` belong to one call:
    ``id`` and ``name`` arrive once, ``arguments_delta`` fragments concatenate to the JSON
    arguments text."""

    model_config = _Frozen

    index: Annotated[int, Field(ge=0)]
    id: str | None = None
    name: str | None = None
    arguments_delta: str = ""


class StreamChunk(BaseModel):
    """One streamed piece: answer text (``delta``), thinking text (``thinking``) or
    tool-call pieces. The last chunk of every stream carries the assembled ``completion``
    (its ``finish_reason`` and final ``usage``) and nothing else."""

    model_config = _Frozen

    delta: str = ""
    thinking: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    completion: Completion | None = None

    @property
    def is_final(self) -> bool:
        return self.completion is not None

    @property
    def usage(self) -> TokenUsage | None:
        return None if self.completion is None else self.completion.usage


# --------------------------------------------------------------------------------------
# Configuration, usage and health
# --------------------------------------------------------------------------------------

_CONFIG_NAME = r"^[a-z][a-z0-9_]{0,63}$"


class LLMConfig(BaseModel):
    """A named way of calling models.

    ``providers`` is the fallback chain, tried in order. ``model`` is the model asked of
    every provider unless ``provider_models`` names one for that provider; ``None`` means
    the provider's own default. ``max_tokens`` caps each completion and is the completion
    part of the budget estimate. ``timeout_seconds`` bounds one provider attempt.
    """

    model_config = _Frozen

    name: Annotated[str, Field(pattern=_CONFIG_NAME)]
    providers: Annotated[tuple[str, ...], Field(min_length=1, max_length=8)] = ("local",)
    model: str | None = None
    provider_models: dict[str, str] = Field(default_factory=dict)
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] = 1024
    timeout_seconds: Annotated[float, Field(gt=0.0, le=600.0)] = 60.0

    def model_for(self, provider: str) -> str | None:
        """The model to request from ``provider`` (``None``: the provider's default)."""
        return self.provider_models.get(provider, self.model)


class UsageTotals(BaseModel):
    """Counters of one user (overall or for one configuration).

    ``requests`` counts every call; ``cache_hits`` / ``cache_misses`` the calls that looked
    in the cache; tokens are what providers reported (cache hits cost none); ``failures``
    the calls that ended in an error.
    """

    model_config = _Frozen

    requests: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ConfigUsage(BaseModel):
    model_config = _Frozen

    config: str
    totals: UsageTotals


class BudgetStatus(BaseModel):
    """The user's token budget for one UTC day. ``used`` includes tokens reserved by calls
    still in flight."""

    model_config = _Frozen

    day: date
    limit: int
    used: int
    remaining: int
    resets_at: datetime


class UsageReport(BaseModel):
    """Usage of the calling user only; never anyone else's."""

    model_config = _Frozen

    user_id: str
    totals: UsageTotals
    per_config: tuple[ConfigUsage, ...] = ()
    budget: BudgetStatus


class ProviderState(enum.StrEnum):
    """Circuit state of a provider: ``closed`` (in use), ``open`` (cooling down after
    failures, skipped), ``half_open`` (cooldown over, the next call is a probe)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class ProviderStatus(BaseModel):
    model_config = _Frozen

    name: str
    state: ProviderState
    consecutive_failures: int = 0
    cooldown_remaining_seconds: float = 0.0


class LLMHealth(BaseModel):
    """``ok``: every provider usable; ``degraded``: some cooling down but every configuration
    still has a usable provider; ``unavailable``: some configuration has none."""

    model_config = _Frozen

    status: Literal["ok", "degraded", "unavailable"]
    providers: tuple[ProviderStatus, ...]
    configs: tuple[str, ...]


# --------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------

ModelT = TypeVar("ModelT", bound=BaseModel)


@runtime_checkable
class LLMManager(Protocol):
    """LLM access for one user's request. Every cache entry, budget and usage counter it
    touches is that user's; nothing is shared with, or visible to, another user."""

    async def complete(self, request: CompletionRequest) -> Completion:
        """One completion. Raises an :class:`LLMError` subclass; never returns an error
        disguised as text."""
        ...

    def stream(self, request: CompletionRequest) -> AsyncIterator[StreamChunk]:
        """The same completion as chunks; the last chunk carries the assembled result."""
        ...

    async def complete_structured(self, request: CompletionRequest, model: type[ModelT]) -> ModelT:
        """Ask for JSON matching ``model``'s schema and return it validated (one repair
        attempt, then :class:`StructuredOutputError`)."""
        ...

    async def usage(self) -> UsageReport:
        """This user's usage totals and today's budget."""
        ...

    async def health(self) -> LLMHealth:
        """Provider circuit states and the configurations on offer."""
        ...
