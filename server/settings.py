"""Settings of the composition root, from ``SSOT_*`` environment variables and flags.

Environment variables set the defaults (``SSOT_GRPC_PORT=0`` …); command-line flags of
``//:server`` override them (design section 7). The embedded default needs none: one
process, SQLite and keys under ``--data-dir``, in-memory cache and router, the offline
``local`` LLM provider. PostgreSQL and Redis are used when their URLs are given.

Each service package keeps its own settings class (``AuthSettings``, ``LLMSettings`` …)
for what only it knows; this one holds what the composition decides: roles, ports,
where data lives, and how the processes of a split deployment find each other.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from context.log_config import LogFormat

__all__ = ["Role", "ServerSettings", "default_data_dir"]


class Role(StrEnum):
    """What one process serves. ``all`` is the embedded default."""

    ALL = "all"
    AUTH = "auth"
    DATA = "data"
    DISPATCH = "dispatch"
    GATEWAY = "gateway"


def default_data_dir() -> Path:
    """``.ssot/`` in the workspace when started by ``bazel run``, else in the cwd."""
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    return Path(workspace or ".") / ".ssot"


class ServerSettings(BaseSettings):
    """What the composition root needs to wire one process."""

    model_config = SettingsConfigDict(env_prefix="SSOT_", frozen=True, extra="ignore")

    role: Role = Role.ALL
    host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    ws_port: int = Field(default=8000, ge=0, le=65535)
    ws_path: str = "/ws"
    #: Prometheus metrics over HTTP; None turns them off.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    data_dir: Path = Field(default_factory=default_data_dir)
    log_level: str = "info"
    log_format: LogFormat = "json"

    #: SQLAlchemy URL of the user data; default SQLite under data_dir.
    database_url: str | None = None
    #: URL of a role allowed to change the schema (PostgreSQL: the tables' owner); the
    #: schema is migrated through it at start-up. Default: ``database_url``.
    database_migration_url: str | None = None
    #: PostgreSQL: the application role granted row access by the migration.
    database_app_role: str | None = None
    #: Auth's own database; default SQLite under ``data_dir/auth``.
    auth_database_url: str | None = None
    #: Redis for the per-user cache, rate limits, cross-node event fan-out and replay.
    redis_url: str | None = None
    #: Origins allowed to open WebSockets (an absent Origin header is allowed).
    allowed_origins: tuple[str, ...] = ("http://localhost", "http://127.0.0.1")
    max_connections_per_user: int = Field(default=5, ge=1)
    max_runs_per_user: int = Field(default=3, ge=1)
    max_data_scopes_per_user: int = Field(default=10, ge=1)
    max_runs_total: int = Field(default=200, ge=1)
    run_timeout_seconds: float = Field(default=120.0, gt=0)

    #: Split deployments: where the other roles' gRPC services are.
    auth_address: str | None = None
    dispatch_address: str | None = None
    #: The identity this process uses for service-to-service calls.
    service_id: str = "ssot-server"
    service_secret: SecretStr | None = None
    #: Seconds the gateway lets running agent runs finish on shutdown.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)

    @model_validator(mode="after")
    def _split_roles_know_their_peers(self) -> ServerSettings:
        if self.role in (Role.DISPATCH, Role.GATEWAY, Role.DATA) and not self.auth_address:
            raise ValueError(f"--role {self.role} needs --auth-address (the auth process)")
        if self.role == Role.GATEWAY and not self.dispatch_address:
            raise ValueError("--role gateway needs --dispatch-address (the dispatch process)")
        return self

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'data.db'}"
