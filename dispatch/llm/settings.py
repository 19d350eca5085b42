"""Configuration of the LLM service, read from ``SSOT_LLM_*`` environment variables.

The embedded default needs none of them: the provider chain is ``local`` only, so the
system answers with no network. Setting ``SSOT_LLM_OPENAI_BASE_URL`` (and usually
``SSOT_LLM_OPENAI_API_KEY``) registers the ``openai`` provider; ``SSOT_LLM_PROVIDERS``
(JSON list, e.g. ``["openai", "local"]``) sets the chain of the built-in configurations.
The API key is a ``SecretStr``: it never appears in a repr or a log line.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dispatch.llm.api import LLMConfig
from dispatch.llm.providers.openai import DEFAULT_OPENAI_MODEL

__all__ = ["BUILTIN_CONFIG_SHAPES", "LLMSettings", "builtin_configs"]

#: The named configurations every deployment has: name -> (temperature, max_tokens).
BUILTIN_CONFIG_SHAPES: dict[str, tuple[float, int]] = {
    "default": (0.0, 1024),
    "analysis": (0.5, 2048),
    "triage": (0.0, 512),
    "data": (0.0, 1024),
    "reporting": (0.3, 2048),
    "optimizations_core": (0.2, 2048),
    "actions_to_meet_goals": (0.3, 2048),
}


class LLMSettings(BaseSettings):
    """Everything the LLM service needs; safe offline defaults."""

    model_config = SettingsConfigDict(env_prefix="SSOT_LLM_", frozen=True)

    providers: tuple[str, ...] = Field(default=("local",), min_length=1)
    model: str | None = None
    timeout_seconds: float = Field(default=60.0, gt=0, le=600)

    openai_base_url: str | None = None
    openai_api_key: SecretStr | None = None
    openai_model: str = DEFAULT_OPENAI_MODEL

    daily_token_budget: int = Field(default=1_000_000, ge=0)

    cache_ttl_seconds: float = Field(default=600.0, gt=0)
    cache_max_entries: int = Field(default=10_000, ge=1)
    cache_max_entries_per_user: int = Field(default=500, ge=1)

    retry_max_attempts: int = Field(default=3, ge=1, le=10)
    retry_base_delay_seconds: float = Field(default=0.5, ge=0)
    retry_max_delay_seconds: float = Field(default=8.0, ge=0)
    retry_max_retry_after_seconds: float = Field(default=30.0, ge=0)
    cooldown_failure_threshold: int = Field(default=5, ge=1)
    cooldown_seconds: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _providers_known(self) -> LLMSettings:
        for name in self.providers:
            if name not in ("local", "openai"):
                raise ValueError(f"unknown provider {name!r} (known: local, openai)")
            if name == "openai" and not self.openai_base_url:
                raise ValueError("the openai provider needs SSOT_LLM_OPENAI_BASE_URL")
        if self.retry_max_delay_seconds < self.retry_base_delay_seconds:
            raise ValueError("retry_max_delay_seconds must be >= retry_base_delay_seconds")
        return self


def builtin_configs(
    providers: tuple[str, ...] = ("local",),
    *,
    model: str | None = None,
    timeout_seconds: float = 60.0,
) -> dict[str, LLMConfig]:
    """The built-in named configurations, all using the chain ``providers``."""
    return {
        name: LLMConfig(
            name=name,
            providers=providers,
            model=model,
            temperature=temperature,
            max_tokens=max_tokens,
            timeout_seconds=timeout_seconds,
        )
        for name, (temperature, max_tokens) in BUILTIN_CONFIG_SHAPES.items()
    }
