"""``dispatch.llm``: per-user LLM access (the ``LLMManager`` SSOT).

One :class:`ContextLLMManager` per request context, built by :class:`LLMManagerFactory`;
providers ``local`` (deterministic, offline, the default) and ``openai`` (any
OpenAI-compatible chat-completions server); a response cache and daily token budget per
user; retries, fallback and provider cooldown; streaming and validated structured output.
The gRPC adapters live in :mod:`dispatch.llm.grpc_server` and :mod:`dispatch.llm.grpc_client`.
"""

from dispatch.llm.api import (
    BudgetStatus,
    ChatMessage,
    Completion,
    CompletionRequest,
    ConfigUsage,
    FinishReason,
    InvalidLLMRequestError,
    LLMConfig,
    LLMError,
    LLMHealth,
    LLMManager,
    ProviderRateLimitedError,
    ProviderState,
    ProviderStatus,
    ProviderUnavailableError,
    ResponseFormat,
    Role,
    StreamChunk,
    StreamInterruptedError,
    StructuredOutputError,
    TokenBudgetExceededError,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolSpec,
    UnknownConfigError,
    UsageReport,
    UsageTotals,
)
from dispatch.llm.manager import ContextLLMManager, LLMManagerFactory
from dispatch.llm.settings import LLMSettings

__all__ = [
    "BudgetStatus",
    "ChatMessage",
    "Completion",
    "CompletionRequest",
    "ConfigUsage",
    "ContextLLMManager",
    "FinishReason",
    "InvalidLLMRequestError",
    "LLMConfig",
    "LLMError",
    "LLMHealth",
    "LLMManager",
    "LLMManagerFactory",
    "LLMSettings",
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
]
