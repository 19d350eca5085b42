"""What a provider is to the manager: one call in, one result (or a stream) out.

A provider adapts one model API. It knows nothing of users, caches, budgets, retries or
fallback: the manager does all of that around it. What it must do is classify its
failures, because the manager's retry and fallback decisions depend on the class:

* :class:`ProviderTransientError` (server errors, lost connections, timeouts, garbled
  answers): retried with backoff, then the next provider;
* :class:`ProviderThrottledError` (HTTP 429): retried after ``retry_after`` when that is
  short enough, otherwise the provider cools down and the next one is tried;
* :class:`ProviderMisconfiguredError` (credentials refused, unknown model or endpoint): not
  retried, the next provider is tried;
* :class:`ProviderRejectedRequestError` (any other HTTP 4xx): the request is at fault, so
  neither retried nor sent elsewhere; the caller gets ``InvalidLLMRequestError``.

All of them are :class:`~dispatch.llm.api.LLMError` subclasses, so the package keeps one
exception hierarchy; the manager translates them to the public errors.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from dispatch.llm.api import (
    ChatMessage,
    FinishReason,
    LLMError,
    ResponseFormat,
    StreamChunk,
    TokenUsage,
    ToolCall,
    ToolChoice,
    ToolSpec,
)

__all__ = [
    "Provider",
    "ProviderCall",
    "ProviderCallError",
    "ProviderMisconfiguredError",
    "ProviderRejectedRequestError",
    "ProviderResult",
    "ProviderStreamItem",
    "ProviderThrottledError",
    "ProviderTransientError",
]


@dataclass(frozen=True, slots=True)
class ProviderCall:
    """One resolved call: the request with the configuration's values filled in."""

    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    model: str | None = None
    temperature: float = 0.0
    max_tokens: int = 1024
    timeout_seconds: float = 60.0
    response_format: ResponseFormat = "text"
    response_schema: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ProviderResult:
    """A provider's finished answer; the manager turns it into a ``Completion``."""

    model: str
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason = "stop"
    usage: TokenUsage = field(default_factory=TokenUsage)
    reasoning: str | None = None


#: A stream yields chunks, and as its very last item the assembled :class:`ProviderResult`.
ProviderStreamItem = StreamChunk | ProviderResult


@runtime_checkable
class Provider(Protocol):
    """One model API under a registration name (``local``, ``openai``, ...)."""

    @property
    def name(self) -> str: ...

    @property
    def default_model(self) -> str: ...

    async def complete(self, call: ProviderCall) -> ProviderResult: ...

    def stream(self, call: ProviderCall) -> AsyncGenerator[ProviderStreamItem, None]:
        """Chunks as they arrive; the last item is the assembled :class:`ProviderResult`."""
        ...

    async def aclose(self) -> None: ...


class ProviderCallError(LLMError):
    """A provider call failed. ``provider`` is the registration name, ``status_code`` the
    HTTP status when there was one. Messages carry no prompt text and no credentials."""

    error_code: ClassVar[str] = "LLM_PROVIDER_CALL_FAILED"
    grpc_status_name: ClassVar[str] = "UNAVAILABLE"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, provider: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status_code = status_code


class ProviderTransientError(ProviderCallError):
    """Worth another try: 5xx, connection failure, timeout, unreadable answer."""

    error_code: ClassVar[str] = "LLM_PROVIDER_TRANSIENT"
    retryable: ClassVar[bool] = True


class ProviderThrottledError(ProviderCallError):
    """HTTP 429. ``retry_after`` is the server's requested wait in seconds, when given."""

    error_code: ClassVar[str] = "LLM_PROVIDER_THROTTLED"
    grpc_status_name: ClassVar[str] = "RESOURCE_EXHAUSTED"
    retryable: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status_code: int | None = 429,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, status_code=status_code)
        self.retry_after = retry_after


class ProviderMisconfiguredError(ProviderCallError):
    """The provider refused us, not the request (401, 403, 404): try the next provider."""

    error_code: ClassVar[str] = "LLM_PROVIDER_MISCONFIGURED"


class ProviderRejectedRequestError(ProviderCallError):
    """The provider found the request itself invalid (other 4xx). Not retried anywhere."""

    error_code: ClassVar[str] = "LLM_PROVIDER_REJECTED_REQUEST"
    grpc_status_name: ClassVar[str] = "INVALID_ARGUMENT"
