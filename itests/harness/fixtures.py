"""pytest fixtures for the hermetic servers.

Use them from a test package with ``pytest_plugins = ["itests.harness.fixtures"]`` in the
root conftest, or import the ones needed into a package's ``conftest.py``::

    from itests.harness.fixtures import postgres_database as postgres_database

Servers are session-scoped (one PostgreSQL and one Redis per test process, started on
first use); what a test touches is function-scoped and fresh: a new database per test,
a flushed Redis per test. A test that stops a shared server leaves it to be restarted by
the next fixture that needs it, so no test depends on another's state. Tests that need
a server of their own (to stop it for good, say) use ``PostgresServer``/``RedisServer``
directly or the ``*_private_*`` fixtures, which are module-scoped.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from itests.harness.postgres import PostgresDatabase, PostgresServer
from itests.harness.redis import RedisServer

log = structlog.get_logger(__name__)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole test process."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def private_postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for one test module alone (for tests that stop it)."""
    with PostgresServer() as server:
        yield server


def _ensure_running(server: PostgresServer) -> None:
    if not server.running:
        log.warning("harness.postgres_restarted_for_next_test", port=server.port)
        server.restart()


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[PostgresDatabase]:
    """A new, empty database on the shared server, dropped after the test."""
    _ensure_running(postgres_server)
    database = postgres_server.create_database()
    try:
        yield database
    finally:
        _ensure_running(postgres_server)
        database.drop()


@pytest.fixture
def private_postgres_database(
    private_postgres_server: PostgresServer,
) -> Iterator[PostgresDatabase]:
    """A new, empty database on this module's own server, dropped after the test."""
    _ensure_running(private_postgres_server)
    database = private_postgres_server.create_database()
    try:
        yield database
    finally:
        _ensure_running(private_postgres_server)
        database.drop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis server for the whole test process."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def private_redis_server() -> Iterator[RedisServer]:
    """A Redis server for one test module alone (for tests that stop it)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The shared Redis server's URL, emptied before the test."""
    if not redis_server.running:
        redis_server.restart()
    redis_server.flushall()
    yield redis_server.url
