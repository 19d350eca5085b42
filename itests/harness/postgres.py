"""A throwaway PostgreSQL server for tests, from the system's PostgreSQL binaries.

``PostgresServer`` runs ``initdb`` into a private temporary directory and starts
``postgres`` on an ephemeral loopback port, tuned for tests (no fsync, small buffers). It
creates three login roles with random passwords:

- ``admin``: the bootstrap superuser, for the harness itself (databases, inspection);
- ``owner``: owns the test databases and their tables, runs migrations;
- ``app``: what the code under test connects as: not a superuser, not an owner, and
  ``NOBYPASSRLS``, so row-level security applies to it.

PostgreSQL refuses to run as root; when the tests are root the server runs as an
unprivileged account (``nobody`` unless ``SSOT_TEST_SERVER_USER`` names another).
``stop()``/``restart()`` keep the data directory and the port, so a test can take the
database away and bring it back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import glob
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypeVar

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from itests.harness._process import (
    LOOPBACK,
    RunAs,
    ServerProcess,
    free_port,
    log_tail,
    make_base_dir,
    wait_until,
)
from itests.harness.errors import HarnessError

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS: dict[StopMode, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}

# A unix socket path may be at most 107 bytes on Linux; ".s.PGSQL.NNNNN" is appended.
_MAX_SOCKET_DIR = 90
_PORT_ATTEMPTS = 5
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def find_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``postgres``.

    ``$SSOT_TEST_PG_BINDIR`` wins; then the highest version under
    ``/usr/lib/postgresql/*/bin`` (Debian and Ubuntu); then ``pg_config --bindir``; then
    ``PATH``.
    """
    override = os.environ.get("SSOT_TEST_PG_BINDIR")
    if override:
        return Path(override)
    versions = []
    for candidate in glob.glob("/usr/lib/postgresql/*/bin"):
        version = Path(candidate).parent.name
        if version.isdigit() and (Path(candidate) / "postgres").exists():
            versions.append((int(version), Path(candidate)))
    if versions:
        return max(versions)[1]
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bin_dir = Path(out.stdout.strip())
        if out.returncode == 0 and (bin_dir / "postgres").exists():
            return bin_dir
    postgres = shutil.which("postgres")
    if postgres:
        return Path(postgres).parent
    raise HarnessError(
        "PostgreSQL server binaries not found (install the `postgresql` package or set "
        "SSOT_TEST_PG_BINDIR)"
    )


@dataclass(frozen=True)
class PostgresRole:
    """A login role of a test server."""

    name: str
    password: str

    def __repr__(self) -> str:
        return f"PostgresRole(name={self.name!r}, password='***')"


RoleName = Literal["admin", "owner", "app"]


@dataclass(frozen=True)
class PostgresDatabase:
    """One database on a test server, owned by the server's ``owner`` role."""

    server: PostgresServer
    name: str

    def dsn(self, role: RoleName = "app") -> str:
        """A libpq/asyncpg URL: ``postgresql://role:password@127.0.0.1:port/name``."""
        return self.server.dsn(role, self.name)

    def sqlalchemy_url(self, role: RoleName = "app") -> str:
        """The same as :meth:`dsn` for SQLAlchemy with asyncpg (``postgresql+asyncpg://``)."""
        return self.server.sqlalchemy_url(role, self.name)

    def drop(self) -> None:
        """Drop the database, disconnecting whoever is still connected to it."""
        self.server.drop_database(self.name)


class PostgresServer:
    """A private PostgreSQL server: ``with PostgresServer() as pg: ...``.

    Not thread-safe; use it from one thread (pytest fixtures do).
    """

    def __init__(
        self,
        *,
        bin_dir: Path | None = None,
        run_as: str | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        owner_role: str = "ssot_owner",
        app_role: str = "ssot_app",
    ) -> None:
        for role in (owner_role, app_role):
            if not _IDENTIFIER.fullmatch(role):
                raise HarnessError(f"role name {role!r} is not a plain lower-case identifier")
        self.bin_dir = bin_dir or find_bin_dir()
        self._run_as_name = run_as
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self.admin = PostgresRole("ssot_admin", secrets.token_hex(16))
        self.owner = PostgresRole(owner_role, secrets.token_hex(16))
        self.app = PostgresRole(app_role, secrets.token_hex(16))
        self.host = LOOPBACK
        self._port: int | None = None
        self._base: Path | None = None
        self._run_as: RunAs | None = None
        self._process: ServerProcess | None = None

    # -- state ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise HarnessError("the PostgreSQL server has not been started")
        return self._port

    @property
    def base_dir(self) -> Path:
        if self._base is None:
            raise HarnessError("the PostgreSQL server has not been started")
        return self._base

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def socket_dir(self) -> Path | None:
        """The unix socket directory, or None when the temp path is too long for one."""
        candidate = self.base_dir / "sock"
        return candidate if len(str(candidate)) <= _MAX_SOCKET_DIR else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.exit_code() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def role(self, role: RoleName) -> PostgresRole:
        return {"admin": self.admin, "owner": self.owner, "app": self.app}[role]

    def dsn(self, role: RoleName = "app", database: str = "postgres") -> str:
        account = self.role(role)
        return f"postgresql://{account.name}:{account.password}@{self.host}:{self.port}/{database}"

    def sqlalchemy_url(self, role: RoleName = "app", database: str = "postgres") -> str:
        return self.dsn(role, database).replace("postgresql://", "postgresql+asyncpg://", 1)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """initdb, start the server on a free port, wait until ready, create the roles."""
        if self._base is not None:
            raise HarnessError("the PostgreSQL server was already started")
        self._run_as = RunAs.for_current_process(self._run_as_name)
        self._base = make_base_dir("ssot-pg-")
        try:
            self._initdb()
            self._spawn_on_free_port()
            self._create_roles()
        except BaseException:
            self.close()
            raise
        log.info("harness.postgres_started", port=self.port, base_dir=str(self._base))

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server, keeping its data directory and port for :meth:`restart`.

        ``immediate`` ends it without a checkpoint, like a crash: committed data survives
        through WAL replay on the next start.
        """
        process, self._process = self._process, None
        if process is None:
            return
        status = process.stop(_STOP_SIGNALS[mode], timeout=self._stop_timeout)
        log.info("harness.postgres_stopped", port=self._port, mode=mode, status=status)

    def restart(self, stop_mode: StopMode = "fast") -> None:
        """Stop (if running) and start again on the same port with the same data."""
        self.stop(stop_mode)
        self._spawn(self.port)
        try:
            self._wait_ready()
        except BaseException:
            self.stop("immediate")
            raise

    def close(self) -> None:
        """Stop the server and delete its directory (safe to call more than once)."""
        try:
            self.stop("fast")
        finally:
            base, self._base = self._base, None
            if base is not None:
                shutil.rmtree(base, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- databases --------------------------------------------------------------------

    def create_database(
        self, name: str | None = None, *, template: str | None = None
    ) -> PostgresDatabase:
        """A new database owned by the ``owner`` role (a random name by default).

        With ``template``, a copy of that database (schema, data, policies and grants):
        much faster than building the same schema again for every test.
        """
        name = name or f"db_{secrets.token_hex(6)}"
        for identifier in (name, template):
            if identifier is not None and not _IDENTIFIER.fullmatch(identifier):
                raise HarnessError(f"database name {identifier!r} is not a plain identifier")
        copy = f' TEMPLATE "{template}"' if template else ""
        self.execute_admin(f'CREATE DATABASE "{name}" OWNER {self.owner.name}{copy}')
        return PostgresDatabase(self, name)

    def drop_database(self, name: str) -> None:
        if not _IDENTIFIER.fullmatch(name):
            raise HarnessError(f"database name {name!r} is not a plain lower-case identifier")
        self.execute_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def connection_count(self, role: RoleName = "app", database: str | None = None) -> int:
        """How many sessions ``role`` has open (on ``database`` if given), per pg_stat_activity."""
        account = self.role(role)

        async def count(conn: AsyncConnection) -> int:
            result = await conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE usename = :role AND (CAST(:db AS text) IS NULL OR datname = :db)"
                ),
                {"role": account.name, "db": database},
            )
            return int(result.scalar_one())

        return self.run_admin(count)

    def execute_admin(self, *statements: str, database: str = "postgres") -> None:
        """Run SQL statements as the superuser, each in autocommit mode."""

        async def run(conn: AsyncConnection) -> None:
            for statement in statements:
                await conn.execute(text(statement))

        self.run_admin(run, database=database)

    def run_admin(
        self,
        work: Callable[[AsyncConnection], Awaitable[_T]],
        database: str = "postgres",
        role: RoleName = "admin",
    ) -> _T:
        """Run ``work`` on a fresh autocommit connection, blocking until it is done.

        It runs on its own event loop in a worker thread, so it may be called both from
        plain code and from inside a running event loop (a sync fixture of an async test).
        """

        async def run() -> _T:
            engine = create_async_engine(
                self.sqlalchemy_url(role, database),
                poolclass=NullPool,
                isolation_level="AUTOCOMMIT",
                connect_args={"timeout": 10},
            )
            try:
                async with engine.connect() as conn:
                    return await work(conn)
            finally:
                await engine.dispose()

        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, run()).result()

    # -- internals --------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.bin_dir}:/usr/bin:/bin",
            "LC_ALL": "C",
            "LANG": "C",
            "TZ": "UTC",
        }

    def _initdb(self) -> None:
        base = self.base_dir
        pwfile = base / "pwfile"
        pwfile.write_text(self.admin.password + "\n")
        pwfile.chmod(0o600)
        argv = [
            str(self.bin_dir / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--username",
            self.admin.name,
            "--pwfile",
            str(pwfile),
            "--auth",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
            "--no-instructions",
        ]
        log_path = base / "initdb.log"
        try:
            process = ServerProcess(
                argv,
                log_path=log_path,
                run_as=self._run_as,
                env=self._env(),
                cwd=base,
                name="initdb",
            )
            status = process.wait(self._startup_timeout)
        finally:
            pwfile.unlink(missing_ok=True)
        if status != 0:
            raise HarnessError(f"initdb failed with status {status}:\n{log_tail(log_path)}")

    def _spawn_on_free_port(self) -> None:
        last_error: HarnessError | None = None
        for _ in range(_PORT_ATTEMPTS):
            port = free_port(self.host)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn(port)
            try:
                self._wait_ready()
            except HarnessError as error:
                self.stop("immediate")
                with self.log_path.open("rb") as log_file:
                    log_file.seek(log_offset)
                    attempt_log = log_file.read().decode(errors="replace")
                if "Address already in use" not in attempt_log:
                    raise
                last_error = error
                log.info("harness.postgres_port_taken", port=port)
                continue
            return
        raise HarnessError(
            f"no free port for PostgreSQL after {_PORT_ATTEMPTS} tries: {last_error}"
        )

    def _spawn(self, port: int) -> None:
        if self.running:
            raise HarnessError("the PostgreSQL server is already running")
        self._port = port
        socket_dir = self.socket_dir
        if socket_dir is not None:
            socket_dir.mkdir(mode=0o700, exist_ok=True)
        settings = {
            "listen_addresses": self.host,
            "unix_socket_directories": str(socket_dir) if socket_dir is not None else "",
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "on",  # committed rows must survive an immediate stop
            "shared_buffers": "32MB",
            "max_connections": "200",
            "dynamic_shared_memory_type": "mmap",  # /dev/shm is tiny in some containers
            "max_worker_processes": "4",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "log_min_error_statement": "panic",  # never log statements (role passwords)
        }
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(port)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        self._process = ServerProcess(
            argv,
            log_path=self.log_path,
            run_as=self._run_as,
            env=self._env(),
            cwd=self.base_dir,
            name=f"postgres:{port}",
        )

    def _wait_ready(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"

        expected_pid = str(self._process.pid) if self._process is not None else ""

        def ready() -> bool:
            # postmaster.pid: line 1 is the postmaster's PID (a file left by an earlier,
            # killed server names another), line 8 its status; pg_ctl waits the same way.
            try:
                lines = pid_file.read_text().splitlines()
            except OSError:
                return False
            return len(lines) >= 8 and lines[0] == expected_pid and lines[7].strip() == "ready"

        def died() -> str | None:
            process = self._process
            if process is None or process.exit_code() is None:
                return None
            return f"postgres exited with status {process.exit_code()}:\n{log_tail(self.log_path)}"

        wait_until(ready, timeout=self._startup_timeout, what="PostgreSQL start", abort=died)

    def _create_roles(self) -> None:
        # Passwords are hex (no quoting issues); statements are never logged (see settings).
        statements = [
            f"CREATE ROLE {self.owner.name} LOGIN PASSWORD '{self.owner.password}' "
            "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
            f"CREATE ROLE {self.app.name} LOGIN PASSWORD '{self.app.password}' "
            "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT",
        ]

        self.execute_admin(*statements)

    def processes(self) -> Iterator[int]:
        """PIDs of this server's postmaster and its children (Linux /proc), for leak checks."""
        pid = self.pid
        if pid is None:
            return
        yield pid
        yield from _children(pid)


def _children(pid: int) -> Iterator[int]:
    """Descendants of ``pid``, from the parent links in /proc/*/stat."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) is parenthesised and may contain spaces.
        fields = stat_line.rpartition(")")[2].split()
        if len(fields) > 1:
            parents[int(entry.name)] = int(fields[1])
    pending = [pid]
    while pending:
        parent = pending.pop()
        for child, its_parent in parents.items():
            if its_parent == parent:
                yield child
                pending.append(child)
