"""Configuration of the WebSocket gateway, read from ``SSOT_WS_*`` environment variables.

The composition root overrides ``host``/``port`` from its flags (``--ws-port``; port 0
binds a free port). Limits follow design section 5: 64 KiB frames, a per-connection
message rate (moving window, ``limits`` notation such as ``"20/second;300/minute"``),
keep-alive pings, and a shutdown deadline for runs to finish.
"""

from __future__ import annotations

from typing import Literal

from limits import parse_many
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_MAX_FRAME_BYTES", "GatewaySettings"]

DEFAULT_MAX_FRAME_BYTES = 64 * 1024


class GatewaySettings(BaseSettings):
    """Where the gateway listens and the limits it enforces."""

    model_config = SettingsConfigDict(env_prefix="SSOT_WS_", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    path: str = Field(default="/ws", pattern=r"^/[A-Za-z0-9/_\-.]*$")
    #: Largest accepted client message (after decompression); larger closes with 1009.
    max_frame_bytes: int = Field(default=DEFAULT_MAX_FRAME_BYTES, ge=1024, le=16 * 1024 * 1024)
    #: Per-connection client message rate; exceeding it closes with 1013.
    message_rate_limit: str = "20/second;300/minute"
    #: Keep-alive: a WebSocket ping every interval; no pong within the timeout closes.
    ping_interval_seconds: float | None = Field(default=20.0, gt=0)
    ping_timeout_seconds: float | None = Field(default=20.0, gt=0)
    open_timeout_seconds: float = Field(default=10.0, gt=0)
    close_timeout_seconds: float = Field(default=5.0, gt=0)
    #: On shutdown, how long running runs may take to finish before connections close.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    compression: Literal["deflate"] | None = "deflate"

    @field_validator("message_rate_limit")
    @classmethod
    def _valid_rate_limit(cls, value: str) -> str:
        try:
            parsed = parse_many(value)
        except ValueError as exc:
            raise ValueError(f"invalid rate limit {value!r}: {exc}") from None
        if not parsed:
            raise ValueError("at least one rate limit is required")
        return value
