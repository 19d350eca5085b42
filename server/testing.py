"""Test support for the composition root, here and in ``//itests``.

* :func:`running_platform` - :func:`server.composition.build_platform` with settings for
  tests (ephemeral ports, cheap argon2, roomy rate limits) as an async context manager
  that closes it on exit;
* :func:`new_account` - register and log in a fresh user;
* :class:`WsClient` - a real ``websockets`` client speaking the gateway protocol;
* :class:`ServerProcess` - ``python -m server.main`` as a child process, its addresses
  read from its ``LISTENING`` line; :func:`run_client` - ``python -m server.client``;
  :func:`child_environment` - their environment (this import path, cheap argon2, a
  service identity the auth process knows).

Test-only: production code never imports this module.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from auth.api import UnifiedAuthenticationService
from auth.settings import Argon2Params
from server.composition import Platform, build_platform
from server.settings import ServerSettings

__all__ = [
    "FAST_AUTH",
    "SERVICE_ID",
    "SERVICE_SECRET",
    "TERMINAL_EVENTS",
    "ServerProcess",
    "TestAccount",
    "WsClient",
    "child_environment",
    "eventually",
    "new_account",
    "run_client",
    "running_platform",
    "settings_for_tests",
]

#: Auth settings overrides for tests: cheap password hashing, generous rate limits.
FAST_AUTH: dict[str, Any] = {
    "argon2": Argon2Params(time_cost=1, memory_cost_kib=256, parallelism=1),
    "login_rate_limit_per_account": "100/minute",
    "login_rate_limit_per_client": "100000/minute",
    "register_rate_limit_per_client": "100000/minute",
}
TERMINAL_EVENTS = frozenset({"agent_completed", "agent_error"})
RECV_TIMEOUT = 20.0
PASSWORD = "correct-horse-battery-staple"  # noqa: S105 - the test accounts' password


def settings_for_tests(data_dir: Path, **overrides: Any) -> ServerSettings:
    """Server settings for tests: ephemeral ports, everything under ``data_dir``."""
    values: dict[str, Any] = {"grpc_port": 0, "ws_port": 0, "data_dir": data_dir}
    values.update(overrides)
    return ServerSettings(**values)


@asynccontextmanager
async def running_platform(data_dir: Path, **kwargs: Any) -> AsyncIterator[Platform]:
    """A started platform for tests, closed on exit.

    ``kwargs`` go to :func:`build_platform`; ``settings`` defaults to
    :func:`settings_for_tests` and ``auth_overrides`` to :data:`FAST_AUTH`.
    """
    kwargs.setdefault("settings", settings_for_tests(data_dir))
    kwargs.setdefault("auth_overrides", FAST_AUTH)
    platform = await build_platform(**kwargs)
    try:
        yield platform
    finally:
        await platform.aclose(grace_seconds=5.0)


@dataclass(frozen=True)
class TestAccount:
    """A registered, logged-in user."""

    __test__ = False  # not a pytest test class

    user_id: str
    email: str
    password: str = field(repr=False)
    access_token: str = field(repr=False)


async def new_account(auth: UnifiedAuthenticationService, name: str = "user") -> TestAccount:
    """Register a user with a unique email and log it in."""
    email = f"{name}-{secrets.token_hex(4)}@example.com"
    account = await auth.register(email, PASSWORD)
    pair = await auth.login(email, PASSWORD)
    return TestAccount(
        user_id=account.user_id, email=email, password=PASSWORD, access_token=pair.access_token
    )


class WsClient:
    """One WebSocket connection speaking the gateway protocol."""

    def __init__(self, ws: ClientConnection, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.welcome = welcome
        #: Frames received while waiting for something else (see :meth:`start`).
        self.pending: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, url: str, token: str, **options: Any) -> WsClient:
        """Connect with ``Authorization: Bearer`` and read ``authentication_success``."""
        ws = await connect(
            url, additional_headers=[("Authorization", f"Bearer {token}")], **options
        )
        welcome = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT))
        if welcome.get("type") != "authentication_success":
            await ws.close()
            raise AssertionError(f"not admitted: {welcome}")
        return cls(ws, welcome)

    @property
    def user_id(self) -> str:
        return str(self.welcome["user_id"])

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.ws.close()

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.recv(), RECV_TIMEOUT)
        parsed: dict[str, Any] = json.loads(frame)
        return parsed

    async def start(self, agent: str, message: str, **fields: Any) -> dict[str, Any]:
        """Send ``start_agent`` and return the ``run_accepted`` reply (events of other
        runs received meanwhile are kept in :attr:`pending`)."""
        await self.send({"type": "start_agent", "agent": agent, "message": message, **fields})
        while True:
            reply = await self.recv()
            if reply.get("type") == "run_accepted":
                return reply
            if reply.get("type") == "error":
                raise AssertionError(f"start_agent refused: {reply}")
            self.pending.append(reply)

    async def events_until_end(self, run_id: str) -> list[dict[str, Any]]:
        """Every event of ``run_id`` up to its terminal one; fails on any other frame."""
        events = [event for event in self.pending if event.get("run_id") == run_id]
        self.pending = [event for event in self.pending if event.get("run_id") != run_id]
        if events and events[-1].get("type") in TERMINAL_EVENTS:
            return events
        while True:
            event = await self.recv()
            if event.get("run_id") != run_id:
                raise AssertionError(f"unexpected frame while reading {run_id}: {event}")
            events.append(event)
            if event["type"] in TERMINAL_EVENTS:
                return events

    async def assert_quiet(self) -> None:
        """Nothing is pending before a ping's pong (no stray events)."""
        await self.send({"type": "ping"})
        reply = await self.recv()
        if reply != {"type": "pong"}:
            raise AssertionError(f"expected pong, got {reply}")

    async def drain(self) -> list[dict[str, Any]]:
        """Every frame until the server closes the connection."""
        frames: list[dict[str, Any]] = []
        while True:
            try:
                frames.append(await self.recv())
            except ConnectionClosed:
                return frames

    async def closed(self) -> int | None:
        """Wait for the server to close; the close code (fails if a frame comes first)."""
        try:
            frame = await asyncio.wait_for(self.ws.recv(), RECV_TIMEOUT)
        except ConnectionClosed:
            return self.ws.close_code
        raise AssertionError(f"expected a close, got {frame!r}")


async def eventually(predicate: Callable[[], bool], within: float = RECV_TIMEOUT) -> None:
    """Wait until ``predicate()`` holds: for server-side state a client cannot await
    (a closed connection being unregistered on the server)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110  (no event exists for this state)
            await asyncio.sleep(0.01)


#: The service identity of split-role children (known to the auth child, used by the others).
SERVICE_ID = "ssot-server"
SERVICE_SECRET = "test-service-secret-0123456789abcdef"  # noqa: S105 - tests only


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child server or client: this interpreter's import path (so
    ``-m server.main`` works under Bazel runfiles too), cheap argon2, the test service
    identity, console-free JSON logs; plus ``extra``."""
    argon2 = FAST_AUTH["argon2"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "SSOT_AUTH_ARGON2_TIME_COST": str(argon2.time_cost),
            "SSOT_AUTH_ARGON2_MEMORY_COST_KIB": str(argon2.memory_cost_kib),
            "SSOT_AUTH_ARGON2_PARALLELISM": str(argon2.parallelism),
            "SSOT_AUTH_SERVICE_CREDENTIALS": json.dumps({SERVICE_ID: SERVICE_SECRET}),
            "SSOT_SERVICE_ID": SERVICE_ID,
            "SSOT_SERVICE_SECRET": SERVICE_SECRET,
        }
    )
    env.update(extra or {})
    return env


def run_client(args: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m server.client ARGS``; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "server.client", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_environment({"COLUMNS": "200"}),
        check=False,
    )


_LISTENING = re.compile(r"^LISTENING grpc=(?P<grpc>\S+) ws=(?P<ws>\S+)")


class ServerProcess:
    """``python -m server.main ARGS`` as a child process (stdout parsed, stderr to a file).

    The environment is :func:`child_environment` updated with ``env``.

    :meth:`start` waits for the ``LISTENING grpc=<addr> ws=<url>`` line; ``grpc`` and
    ``ws`` are then known ("-" when the role serves none). :meth:`stop` sends SIGTERM and
    waits for a clean exit.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        startup_timeout: float = 40.0,
    ) -> None:
        self._args = list(args)
        self._log_path = log_path
        self._env = env
        self._timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self.grpc = "-"
        self.ws = "-"

    def start(self) -> Self:
        env = child_environment(self._env)
        log_file = self._log_path.open("w")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "server.main", *self._args],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env=env,
        )
        log_file.close()
        deadline = time.monotonic() + self._timeout
        stdout = self._process.stdout
        assert stdout is not None
        while time.monotonic() < deadline:
            line = stdout.readline()
            if not line:
                code = self._process.wait(5)
                raise RuntimeError(f"server exited ({code}) before listening: {self.log()}")
            match = _LISTENING.match(line.strip())
            if match:
                self.grpc, self.ws = match["grpc"], match["ws"]
                return self
        self.kill()
        raise RuntimeError(f"server did not start within {self._timeout}s: {self.log()}")

    def log(self) -> str:
        """The child's stderr so far (its log lines), for failure messages."""
        try:
            return self._log_path.read_text()[-4000:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; returns the exit code (kills after ``timeout``)."""
        process = self._process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode

    def kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
