"""A throwaway Redis server for tests, from the system's ``redis-server``.

Redis cannot bind port 0, so a free port is picked first and the start is retried on a
collision. Persistence is off (``save ""``, ``appendonly no``), a random password is
required, and the configuration (with the password) is a private file rather than a
command-line argument that other local users could read.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
from pathlib import Path
from types import TracebackType
from typing import Self

import redis as redis_sync
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

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

_PORT_ATTEMPTS = 5
_MAX_SOCKET_PATH = 100


def find_redis_server() -> Path:
    """``$SSOT_TEST_REDIS_SERVER``, else ``redis-server`` on PATH or in /usr/bin."""
    override = os.environ.get("SSOT_TEST_REDIS_SERVER")
    if override:
        return Path(override)
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise HarnessError(
            "redis-server not found (install the `redis-server` package or set "
            "SSOT_TEST_REDIS_SERVER)"
        )
    return Path(found)


class RedisServer:
    """A private Redis server: ``with RedisServer() as r: r.url``.

    Not thread-safe; use it from one thread (pytest fixtures do).
    """

    def __init__(
        self,
        *,
        binary: Path | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 15.0,
        unix_socket: bool = False,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.password = secrets.token_hex(16)
        self.host = LOOPBACK
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._want_unix_socket = unix_socket
        self._port: int | None = None
        self._base: Path | None = None
        self._run_as: RunAs | None = None
        self._process: ServerProcess | None = None

    def __repr__(self) -> str:
        return f"RedisServer(port={self._port}, running={self.running})"

    @property
    def port(self) -> int:
        if self._port is None:
            raise HarnessError("the Redis server has not been started")
        return self._port

    @property
    def base_dir(self) -> Path:
        if self._base is None:
            raise HarnessError("the Redis server has not been started")
        return self._base

    @property
    def log_path(self) -> Path:
        return self.base_dir / "redis.log"

    @property
    def unix_socket(self) -> Path | None:
        """The unix socket path when one was asked for and the path is short enough."""
        path = self.base_dir / "redis.sock"
        if not self._want_unix_socket or len(str(path)) > _MAX_SOCKET_PATH:
            return None
        return path

    @property
    def url(self) -> str:
        """``redis://:password@127.0.0.1:port/0``."""
        return self.url_for_db(0)

    def url_for_db(self, db: int) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.exit_code() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        if self._base is not None:
            raise HarnessError("the Redis server was already started")
        # Redis runs as root without complaint; still, a test server needs no privileges.
        self._run_as = RunAs.for_current_process()
        self._base = make_base_dir("ssot-redis-")
        try:
            self._spawn_on_free_port()
        except BaseException:
            self.close()
            raise
        log.info("harness.redis_started", port=self.port, base_dir=str(self._base))

    def stop(self) -> None:
        """Stop the server (SIGTERM: Redis shuts down; nothing is persisted)."""
        process, self._process = self._process, None
        if process is None:
            return
        status = process.stop(signal.SIGTERM, timeout=self._stop_timeout)
        log.info("harness.redis_stopped", port=self._port, status=status)

    def restart(self) -> None:
        """Stop (if running) and start again on the same port; the data is gone."""
        self.stop()
        self._spawn(self.port)
        self._wait_ready()

    def close(self) -> None:
        """Stop the server and delete its directory (safe to call more than once)."""
        try:
            self.stop()
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

    # -- helpers for tests ------------------------------------------------------------

    def client(self, db: int = 0, *, timeout: float = 5.0) -> redis_sync.Redis:
        """A synchronous client without retries (the caller closes it)."""
        return redis_sync.Redis(
            host=self.host,
            port=self.port,
            db=db,
            password=self.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()

    def connected_clients(self) -> int:
        """How many clients are connected, not counting the one asking."""
        with self.client() as client:
            clients = client.client_list()
            return len(clients) - 1

    # -- internals --------------------------------------------------------------------

    def _write_config(self, port: int) -> Path:
        config = self.base_dir / "redis.conf"
        lines = [
            f"port {port}",
            f"bind {self.host}",
            "protected-mode yes",
            f'requirepass "{self.password}"',
            'save ""',
            "appendonly no",
            "daemonize no",
            f'dir "{self.base_dir}"',
            'logfile ""',
            "loglevel warning",
            "databases 16",
        ]
        socket = self.unix_socket
        if socket is not None:
            lines += [f'unixsocket "{socket}"', "unixsocketperm 700"]
        config.write_text("\n".join(lines) + "\n")
        config.chmod(0o600)
        return config

    def _spawn_on_free_port(self) -> None:
        for _ in range(_PORT_ATTEMPTS):
            port = free_port(self.host)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn(port)
            try:
                self._wait_ready()
            except HarnessError:
                self.stop()
                with self.log_path.open("rb") as log_file:
                    log_file.seek(log_offset)
                    attempt_log = log_file.read().decode(errors="replace")
                if "Address already in use" not in attempt_log:
                    raise
                log.info("harness.redis_port_taken", port=port)
                continue
            return
        raise HarnessError(f"no free port for Redis after {_PORT_ATTEMPTS} tries")

    def _spawn(self, port: int) -> None:
        if self.running:
            raise HarnessError("the Redis server is already running")
        self._port = port
        config = self._write_config(port)
        self._process = ServerProcess(
            [str(self.binary), str(config)],
            log_path=self.log_path,
            run_as=self._run_as,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
            cwd=self.base_dir,
            name=f"redis:{port}",
        )

    def _wait_ready(self) -> None:
        def ready() -> bool:
            try:
                with self.client(timeout=0.5) as client:
                    return bool(client.ping())
            except redis_sync.RedisError:
                return False

        def died() -> str | None:
            process = self._process
            if process is None or process.exit_code() is None:
                return None
            return (
                f"redis-server exited with status {process.exit_code()}:\n{log_tail(self.log_path)}"
            )

        wait_until(ready, timeout=self._startup_timeout, what="Redis start", abort=died)
