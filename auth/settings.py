"""Configuration of the auth service, read from ``SSOT_AUTH_*`` environment variables.

Command-line flags of ``auth.server_main`` override these (design section 7). Secrets are
``SecretStr`` so they never appear in a repr or a log line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from auth.api import TokenType

__all__ = ["Argon2Params", "AuthSettings", "SigningAlgorithm"]

SigningAlgorithm = Literal["EdDSA", "RS256", "HS256"]

_DAY = 24 * 3600


class Argon2Params(BaseSettings):
    """argon2id cost parameters (defaults: RFC 9106 "second recommended" profile)."""

    model_config = SettingsConfigDict(env_prefix="SSOT_AUTH_ARGON2_", frozen=True)

    time_cost: int = Field(default=3, ge=1)
    memory_cost_kib: int = Field(default=65536, ge=8)
    parallelism: int = Field(default=4, ge=1)

    @model_validator(mode="after")
    def _memory_covers_lanes(self) -> Argon2Params:
        if self.memory_cost_kib < 8 * self.parallelism:
            raise ValueError("argon2 memory_cost_kib must be at least 8 * parallelism")
        return self


class AuthSettings(BaseSettings):
    """Everything the auth service needs to run; safe defaults for the embedded form."""

    model_config = SettingsConfigDict(env_prefix="SSOT_AUTH_", frozen=True)

    issuer: str = "ssot-auth"
    access_audience: str = "ssot-api"
    refresh_audience: str = "ssot-auth-refresh"
    service_audience: str = "ssot-services"

    access_ttl_seconds: int = Field(default=15 * 60, ge=1)
    refresh_ttl_seconds: int = Field(default=7 * _DAY, ge=1)
    service_ttl_seconds: int = Field(default=3600, ge=1)
    leeway_seconds: int = Field(default=10, ge=0, le=300)
    max_token_bytes: int = Field(default=8192, ge=256)

    algorithm: SigningAlgorithm = "EdDSA"
    rsa_key_size: int = Field(default=3072, ge=2048)
    hs256_secret: SecretStr | None = None
    # A signing key older than this is replaced on the next issue; 0 = manual rotation only.
    key_rotation_interval_seconds: int = Field(default=30 * _DAY, ge=0)

    data_dir: Path = Path(".ssot/auth")
    database_url: str | None = None

    # service id -> secret, e.g. SSOT_AUTH_SERVICE_CREDENTIALS='{"backend": "..."}'
    service_credentials: dict[str, SecretStr] = Field(default_factory=dict)
    # Roles granted to every service token (design: services act for any user).
    service_roles: tuple[str, ...] = ("service",)

    login_rate_limit_per_account: str = "10/minute"
    login_rate_limit_per_client: str = "60/minute"
    register_rate_limit_per_client: str = "30/minute"
    rate_limit_storage_uri: str = "memory://"

    password_min_length: int = Field(default=8, ge=1)
    password_max_length: int = Field(default=1024, ge=8)
    argon2: Argon2Params = Field(default_factory=Argon2Params)

    @field_validator("hs256_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("hs256_secret must be at least 32 bytes")
        return value

    @model_validator(mode="after")
    def _distinct_audiences(self) -> AuthSettings:
        audiences = {self.access_audience, self.refresh_audience, self.service_audience}
        if len(audiences) != 3:
            raise ValueError("access, refresh and service audiences must differ")
        return self

    def audience_for(self, token_type: TokenType) -> str:
        return {
            TokenType.ACCESS: self.access_audience,
            TokenType.REFRESH: self.refresh_audience,
            TokenType.SERVICE: self.service_audience,
        }[token_type]

    def ttl_for(self, token_type: TokenType) -> int:
        return {
            TokenType.ACCESS: self.access_ttl_seconds,
            TokenType.REFRESH: self.refresh_ttl_seconds,
            TokenType.SERVICE: self.service_ttl_seconds,
        }[token_type]

    @property
    def max_token_lifetime_seconds(self) -> int:
        """How long a retired key must still verify: the longest TTL plus leeway."""
        return (
            max(self.access_ttl_seconds, self.refresh_ttl_seconds, self.service_ttl_seconds)
            + self.leeway_seconds
        )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'auth.db').resolve()}"
