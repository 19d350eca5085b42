"""Configuration of WebSocket authentication, read from ``SSOT_WS_AUTH_*`` variables.

The composition root may build it from flags instead; every field has a safe default.
``allowed_origins`` is empty by default: browsers (which always send ``Origin``) are then
refused until their site is listed, while non-browser clients are unaffected.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from websocket.auth.credentials import DEFAULT_MAX_TOKEN_BYTES
from websocket.auth.expiry import ExpiryPolicy
from websocket.auth.origins import normalize_origin
from websocket.auth.slots import DEFAULT_MAX_CONNECTIONS_PER_USER

__all__ = ["WebSocketAuthSettings"]


class WebSocketAuthSettings(BaseSettings):
    """Limits and policies of :class:`~websocket.auth.authenticator.WebSocketAuthenticator`."""

    model_config = SettingsConfigDict(env_prefix="SSOT_WS_AUTH_", frozen=True)

    #: Origins (``scheme://host[:port]``) whose pages may connect.
    allowed_origins: tuple[str, ...] = ()
    max_connections_per_user: int = Field(default=DEFAULT_MAX_CONNECTIONS_PER_USER, ge=1)
    #: Largest accepted access token, in bytes (also bounds the subprotocol form).
    max_token_bytes: int = Field(default=DEFAULT_MAX_TOKEN_BYTES, ge=256, le=65536)
    #: ``token_expiring`` is sent this many seconds before the token expires.
    expiry_warning_seconds: float = Field(default=60.0, ge=0)
    #: After expiry, a connection without a refreshed token is closed once this has passed.
    expiry_grace_seconds: float = Field(default=30.0, ge=0)

    def expiry_policy(self) -> ExpiryPolicy:
        """The warning and grace periods as the expiry watcher takes them."""
        return ExpiryPolicy(
            warning_seconds=self.expiry_warning_seconds, grace_seconds=self.expiry_grace_seconds
        )

    @field_validator("allowed_origins")
    @classmethod
    def _valid_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(normalize_origin(origin) for origin in value)
