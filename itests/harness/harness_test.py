"""The hermetic servers: they start, serve, restart, stop, and leave nothing behind."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import redis as redis_sync
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from itests.harness import HarnessError, PostgresServer, RedisServer, free_port, wait_until
from itests.harness import _process as process_module
from itests.harness._process import RunAs, make_base_dir
from itests.harness.postgres import PostgresDatabase


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def _uid_inside(pid: int) -> int:
    """The uid process ``pid`` has in its own user namespace (per its uid_map)."""
    seen_from_here = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            seen_from_here = int(line.split()[1])
    for line in Path(f"/proc/{pid}/uid_map").read_text().splitlines():
        inside, outside, count = (int(part) for part in line.split())
        if outside <= seen_from_here < outside + count:
            return inside + seen_from_here - outside
    raise AssertionError(f"uid {seen_from_here} is not mapped for process {pid}")


# -- process helpers ----------------------------------------------------------------------


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_wait_until_times_out_or_aborts_with_a_reason() -> None:
    with pytest.raises(HarnessError, match="not done"):
        wait_until(lambda: False, timeout=0.05, what="never")
    with pytest.raises(HarnessError, match="it died"):
        wait_until(lambda: False, timeout=10, what="x", abort=lambda: "it died")


def test_run_as_wraps_the_command_in_a_user_namespace() -> None:
    run_as = RunAs(name="nobody", uid=65534, gid=65534)
    argv = run_as.wrap(["postgres", "-D", "data"])
    assert argv[1:] == [
        "--user",
        "--map-user=65534",
        "--map-group=65534",
        "--",
        "postgres",
        "-D",
        "data",
    ]


def test_base_dir_is_under_test_tmpdir_when_reachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_TMPDIR", str(tmp_path))
    base = make_base_dir("unit-")
    assert base.parent == tmp_path


def test_run_as_matches_the_current_user() -> None:
    run_as = RunAs.for_current_process()
    if os.geteuid() == 0:
        assert run_as is not None
        assert run_as.uid != 0
    else:
        assert run_as is None
    with pytest.raises(HarnessError):
        if os.geteuid() == 0:
            RunAs.for_current_process("no-such-account-ssot")
        else:
            raise HarnessError("servers run as the current user when not root")


# -- PostgreSQL ---------------------------------------------------------------------------


async def _scalar(url: str, sql: str) -> object:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.scalar(text(sql))
    finally:
        await engine.dispose()


async def test_postgres_roles(postgres_database: PostgresDatabase) -> None:
    server = postgres_database.server

    async def role_flags(conn: AsyncConnection) -> dict[str, tuple[bool, bool]]:
        rows = await conn.execute(text("SELECT rolname, rolsuper, rolbypassrls FROM pg_roles"))
        return {row[0]: (row[1], row[2]) for row in rows}

    flags = server.run_admin(role_flags)
    assert flags[server.admin.name] == (True, True)
    assert flags[server.owner.name] == (False, False)
    assert flags[server.app.name] == (False, False)
    assert await _scalar(postgres_database.sqlalchemy_url("app"), "SELECT current_user") == (
        server.app.name
    )
    owner = await _scalar(
        postgres_database.sqlalchemy_url("owner"),
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()",
    )
    assert owner == server.owner.name
    assert "***" in repr(server.app)
    assert server.app.password not in repr(server.app)


async def test_postgres_refuses_a_wrong_password(postgres_database: PostgresDatabase) -> None:
    url = postgres_database.sqlalchemy_url("app").replace(
        postgres_database.server.app.password, "wrong"
    )
    with pytest.raises(DBAPIError):
        await _scalar(url, "SELECT 1")


def test_postgres_lifecycle_restart_and_clean_stop() -> None:
    server = PostgresServer()
    with server:
        base = server.base_dir
        assert base.is_dir()
        pid = server.pid
        assert pid is not None
        expected_uid = RunAs.for_current_process()
        assert _uid_inside(pid) == (expected_uid.uid if expected_uid else os.getuid())
        database = server.create_database()

        async def create(conn: AsyncConnection) -> None:
            await conn.execute(text("CREATE TABLE kept (v int)"))
            await conn.execute(text("INSERT INTO kept VALUES (42)"))

        server.run_admin(create, database=database.name)
        port = server.port
        processes = list(server.processes())
        assert len(processes) > 1

        server.restart("immediate")  # a crash: committed data survives via WAL replay
        assert server.port == port
        assert server.pid != pid
        assert all(not _alive(p) for p in processes)

        async def read(conn: AsyncConnection) -> object:
            return await conn.scalar(text("SELECT v FROM kept"))

        assert server.run_admin(read, database=database.name) == 42
        last = list(server.processes())
    assert not base.exists()
    assert all(not _alive(p) for p in last)
    assert not server.running


@pytest.mark.parametrize("reachable", [True, False], ids=["fails", "cannot-run"])
def test_postgres_start_failure_leaves_nothing(reachable: bool) -> None:
    bogus = Path(tempfile.mkdtemp(prefix="ssot-fake-pg-"))
    try:
        script = bogus / "initdb"
        script.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
        script.chmod(0o755 if reachable else 0o600)
        bogus.chmod(0o755)
        server = PostgresServer(bin_dir=bogus)
        with pytest.raises(
            HarnessError, match="initdb failed" if reachable else "cannot start|Permission denied"
        ):
            server.start()
        assert not server.running
        with pytest.raises(HarnessError):
            _ = server.base_dir
    finally:
        shutil.rmtree(bogus)


def test_postgres_retries_when_its_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        ports = iter([taken])
        real = process_module.free_port

        def first_taken(host: str = "127.0.0.1") -> int:
            return next(ports, None) or real(host)

        monkeypatch.setattr("itests.harness.postgres.free_port", first_taken)
        with PostgresServer() as server:
            assert server.port != taken
            assert server.running


# -- Redis --------------------------------------------------------------------------------


def test_redis_lifecycle(tmp_path: Path) -> None:
    server = RedisServer(unix_socket=True)
    with server:
        base = server.base_dir
        client = server.client()
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
        anonymous = redis_sync.Redis(
            host="127.0.0.1", port=server.port, retry=Retry(NoBackoff(), 0)
        )
        with pytest.raises(redis_sync.AuthenticationError):
            anonymous.ping()
        anonymous.close()
        port, pid = server.port, server.pid
        server.restart()
        assert server.port == port
        assert pid is not None and not _alive(pid)
        with server.client() as fresh:
            assert fresh.get("k") is None  # nothing persisted
        last = server.pid
        assert last is not None
        assert ".conf" in " ".join(p.name for p in base.iterdir())
        assert server.password not in Path(f"/proc/{last}/cmdline").read_text()
    assert not base.exists()
    assert not _alive(last)


def test_redis_retries_when_its_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        ports = iter([taken])
        real = process_module.free_port

        def first_taken(host: str = "127.0.0.1") -> int:
            return next(ports, None) or real(host)

        monkeypatch.setattr("itests.harness.redis.free_port", first_taken)
        with RedisServer() as server:
            assert server.port != taken
            assert server.client().ping()


def test_redis_url_fixture_starts_empty(redis_url: str, redis_server: RedisServer) -> None:
    with redis_server.client() as client:
        assert client.dbsize() == 0
        client.set("left-over", "x")  # the next test's fixture flushes it
    assert redis_url == redis_server.url


def test_shared_server_stopped_by_a_test_is_restarted_for_the_next(
    postgres_server: PostgresServer, request: pytest.FixtureRequest
) -> None:
    postgres_server.stop()
    database: PostgresDatabase = request.getfixturevalue("postgres_database")
    assert postgres_server.running
    assert database.name.startswith("db_")
