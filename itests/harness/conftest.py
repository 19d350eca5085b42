"""The harness's own tests use its fixtures like any other package would."""

from itests.harness.fixtures import (
    postgres_database,
    postgres_server,
    redis_server,
    redis_url,
)

__all__ = ["postgres_database", "postgres_server", "redis_server", "redis_url"]
