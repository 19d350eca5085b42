"""Test support for ``websocket.auth`` and for tests that compose it (gateway, itests).

* :class:`ManualClock` - a :class:`~websocket.auth.expiry.Clock` that only moves when a
  test advances it, so expiry behaviour is tested without waiting for real time;
* :class:`ShiftedTime` - ``time.time`` plus an adjustable offset, the ``clock`` of a real
  auth service whose tokens a test wants issued "later" (or "earlier");
* :func:`unreachable_auth_service` - the real gRPC auth client aimed at a port where no
  server listens: the auth service is down;
* :func:`register_user` - a real account and access token from a real
  :class:`~auth.service.LocalAuthService`.

Test-only: production code never imports this module.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from auth.api import UnifiedAuthenticationService
from auth.grpc_client import ClientPolicy, GrpcAuthClient

__all__ = [
    "ManualClock",
    "ShiftedTime",
    "TestUser",
    "login_again",
    "register_user",
    "unreachable_auth_service",
]

_PASSWORD = "correct horse battery staple"  # noqa: S105  (a test account's password)


class ManualClock:
    """Unix-seconds time that stands still until :meth:`advance` or :meth:`set` moves it.

    Sleepers whose deadline has been reached are woken when time moves.
    """

    def __init__(self, start: float) -> None:
        self._now = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._sleeper_added = asyncio.Event()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (deadline, future)
        self._sleepers.append(entry)
        self._sleeper_added.set()
        try:
            await future
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    def set(self, now: float) -> None:
        self._now = now
        for deadline, future in list(self._sleepers):
            if deadline <= now and not future.done():
                future.set_result(None)

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting on this clock now."""
        return sum(1 for _, future in self._sleepers if not future.done())

    async def wait_for_sleeper(self) -> None:
        """Return once at least one task is waiting on this clock."""
        while self.sleepers == 0:
            self._sleeper_added.clear()
            await self._sleeper_added.wait()


class ShiftedTime:
    """A ``time.time``-like callable running ``offset`` seconds ahead of the real clock."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass(frozen=True)
class TestUser:
    """A registered account and a fresh access token."""

    __test__ = False  # not a pytest test class

    user_id: str
    email: str
    access_token: str = field(repr=False)


async def register_user(auth: UnifiedAuthenticationService, name: str | None = None) -> TestUser:
    """Register a new account (unique email) and log it in."""
    email = f"{name or 'user'}-{secrets.token_hex(4)}@example.com"
    account = await auth.register(email, _PASSWORD)
    pair = await auth.login(email, _PASSWORD)
    return TestUser(user_id=account.user_id, email=email, access_token=pair.access_token)


async def login_again(auth: UnifiedAuthenticationService, user: TestUser) -> str:
    """A new access token for ``user`` (a second session)."""
    pair = await auth.login(user.email, _PASSWORD)
    return pair.access_token


@asynccontextmanager
async def unreachable_auth_service() -> AsyncIterator[GrpcAuthClient]:
    """The gRPC auth client, configured to give up fast, aimed at a dead loopback port.

    The port stays bound (but not listening) for the duration, so connections to it are
    refused and no other process can take it meanwhile.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as reserved:
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        policy = ClientPolicy(deadline_seconds=1.0, attempt_timeout_seconds=0.5, max_attempts=1)
        client = GrpcAuthClient(f"127.0.0.1:{port}", policy=policy)
        try:
            yield client
        finally:
            await client.close()
