"""Hermetic infrastructure for tests: throwaway PostgreSQL and Redis servers.

Each server runs from the system binaries on an ephemeral loopback port, keeps its files
under a temporary directory (below ``TEST_TMPDIR`` when Bazel sets it) and is stopped and
removed at the end; pytest fixtures that wrap them live in :mod:`itests.harness.fixtures`.
"""

from itests.harness._process import free_port, wait_until
from itests.harness.errors import HarnessError
from itests.harness.postgres import PostgresDatabase, PostgresRole, PostgresServer
from itests.harness.redis import RedisServer

__all__ = [
    "HarnessError",
    "PostgresDatabase",
    "PostgresRole",
    "PostgresServer",
    "RedisServer",
    "free_port",
    "wait_until",
]
