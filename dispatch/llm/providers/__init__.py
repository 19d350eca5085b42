"""Model API adapters: ``local`` (deterministic, offline) and ``openai`` (OpenAI-compatible
chat completions over HTTP). See :mod:`dispatch.llm.providers.base` for the contract."""

from dispatch.llm.providers.base import (
    Provider,
    ProviderCall,
    ProviderCallError,
    ProviderMisconfiguredError,
    ProviderRejectedRequestError,
    ProviderResult,
    ProviderStreamItem,
    ProviderThrottledError,
    ProviderTransientError,
)
from dispatch.llm.providers.local import LocalProvider
from dispatch.llm.providers.openai import OpenAIProvider

__all__ = [
    "LocalProvider",
    "OpenAIProvider",
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
