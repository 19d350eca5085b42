"""Keeping a live connection's token valid: ``token_expiring`` and ``refresh_token``.

A connection is authenticated once, at the handshake, but its access token expires. The
protocol on a live connection:

1. ``warning_seconds`` before ``expires_at`` the server sends
   ``{"type":"token_expiring","expires_in":<whole seconds>}``;
2. the client may send ``{"type":"refresh_token","access_token":"..."}`` at any time. The
   token is re-validated; if valid and of the SAME user, the connection continues under the
   new expiry and gets ``{"type":"token_refreshed","expires_in":...}``. A valid token of a
   different user closes the connection (1008). An invalid token is answered with an
   error and changes nothing: the client may try again until the deadline;
3. if no valid token arrived by ``expires_at + grace_seconds``, the connection is closed
   with ``authentication_error`` ``TOKEN_EXPIRED`` and 1008.

Split like python-websockets: :class:`TokenExpiry` is the protocol state (pure, driven by
times passed in), :class:`ExpiryWatcher` the asyncio driver, which reads time from an
injectable :class:`Clock` and talks to the connection through an :class:`ExpiryTransport`.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

from websocket.auth.api import (
    TokenExpiredError,
    TokenExpiringMessage,
    TokenRefreshedMessage,
    UnifiedWebSocketAuth,
    UserMismatchError,
    WebSocketAuthError,
)

__all__ = [
    "Clock",
    "ExpiryPolicy",
    "ExpiryTransport",
    "ExpiryWatcher",
    "SystemClock",
    "TokenExpiry",
]

log = structlog.get_logger(__name__)


class Clock(Protocol):
    """Wall-clock time in Unix seconds, and waiting until such a time."""

    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``now() >= deadline`` (at once if it already is)."""
        ...


class SystemClock:
    """The real clock (``time.time``) and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        # Waking a little early is harmless: the watcher re-polls and waits again.
        await asyncio.sleep(max(0.0, deadline - time.time()))


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    """When to warn before expiry and how long to wait after it for a refresh."""

    warning_seconds: float = 60.0
    grace_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.warning_seconds < 0 or self.grace_seconds < 0:
            raise ValueError("expiry warning and grace periods must not be negative")


class TokenExpiry:
    """The expiry state of one connection's token. No I/O, no clock of its own.

    ``expires_at`` is Unix seconds, or ``None`` for a token without expiry (then nothing
    is ever due).
    """

    __slots__ = ("_expires_at", "_policy", "_warned", "refreshes", "user_id")

    def __init__(self, *, user_id: str, expires_at: float | None, policy: ExpiryPolicy) -> None:
        self.user_id = user_id
        self._expires_at = expires_at
        self._policy = policy
        self._warned = False
        self.refreshes = 0

    @property
    def expires_at(self) -> float | None:
        return self._expires_at

    @property
    def warned(self) -> bool:
        return self._warned

    def next_deadline(self) -> float | None:
        """The time at which :meth:`poll` will next have something to do."""
        if self._expires_at is None:
            return None
        if not self._warned:
            return self._expires_at - self._policy.warning_seconds
        return self._expires_at + self._policy.grace_seconds

    def poll(self, now: float) -> TokenExpiringMessage | TokenExpiredError | None:
        """What is due at ``now``: the warning to send, the error to close with, or nothing.

        Call repeatedly until it returns ``None``: a late poll may owe both.
        """
        expires_at = self._expires_at
        if expires_at is None:
            return None
        if not self._warned and now >= expires_at - self._policy.warning_seconds:
            self._warned = True
            return TokenExpiringMessage(expires_in=max(0, math.floor(expires_at - now)))
        if self._warned and now >= expires_at + self._policy.grace_seconds:
            return TokenExpiredError()
        return None

    def refreshed(self, expires_at: float | None, now: float) -> TokenRefreshedMessage:
        """Adopt a validated replacement token's expiry; re-arms the warning."""
        self._expires_at = expires_at
        self._warned = False
        self.refreshes += 1
        expires_in = 0 if expires_at is None else max(0, math.floor(expires_at - now))
        return TokenRefreshedMessage(expires_in=expires_in)


class ExpiryTransport(Protocol):
    """How the watcher reaches its connection; the server adapter implements it."""

    async def send_expiry_message(
        self, message: TokenExpiringMessage | TokenRefreshedMessage
    ) -> None:
        """Send a ``token_expiring`` or ``token_refreshed`` message."""
        ...

    async def reject_refresh(self, error: WebSocketAuthError) -> None:
        """Tell the client its ``refresh_token`` was not accepted; the connection stays."""
        ...

    async def close_for(self, error: WebSocketAuthError) -> None:
        """Send ``authentication_error`` for ``error`` and close with its close code."""
        ...


def _timestamp(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


class ExpiryWatcher:
    """Runs the expiry protocol of one live connection.

    Start :meth:`run` as a task beside the connection's receive loop and cancel it when the
    connection ends; route each ``refresh_token`` message to :meth:`refresh`.
    """

    def __init__(
        self,
        *,
        user_id: str,
        expires_at: datetime | None,
        authenticator: UnifiedWebSocketAuth,
        transport: ExpiryTransport,
        policy: ExpiryPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._state = TokenExpiry(
            user_id=user_id, expires_at=_timestamp(expires_at), policy=policy or ExpiryPolicy()
        )
        self._authenticator = authenticator
        self._transport = transport
        self._clock: Clock = clock or SystemClock()
        self._changed = asyncio.Event()
        self._closed = False

    @property
    def state(self) -> TokenExpiry:
        return self._state

    @property
    def closed(self) -> bool:
        """Whether the watcher closed the connection (expiry or user mismatch)."""
        return self._closed

    async def run(self) -> None:
        """Warn and close on time until the connection closes or this task is cancelled."""
        state, clock = self._state, self._clock
        while not self._closed:
            self._changed.clear()
            due = state.poll(clock.now())
            if isinstance(due, TokenExpiringMessage):
                log.info(
                    "websocket_token_expiring", user_id=state.user_id, expires_in=due.expires_in
                )
                await self._transport.send_expiry_message(due)
                continue
            if isinstance(due, TokenExpiredError):
                log.info("websocket_token_expired_closing", user_id=state.user_id)
                await self._close(due)
                return
            await self._wait(state.next_deadline())

    async def _wait(self, deadline: float | None) -> None:
        changed = asyncio.ensure_future(self._changed.wait())
        if deadline is None:
            await changed
            return
        sleeper = asyncio.ensure_future(self._clock.sleep_until(deadline))
        try:
            await asyncio.wait({changed, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            sleeper.cancel()

    async def refresh(self, access_token: str) -> None:
        """Handle a ``refresh_token`` message (see the module docstring for outcomes)."""
        if self._closed:
            return
        try:
            result = await self._authenticator.revalidate(access_token, user_id=self._state.user_id)
        except UserMismatchError as exc:
            await self._close(exc)
            return
        except WebSocketAuthError as exc:
            if self._is_open():
                await self._transport.reject_refresh(exc)
            return
        if not self._is_open():  # the grace period ended while the token was being checked
            return
        reply = self._state.refreshed(_timestamp(result.expires_at), self._clock.now())
        self._changed.set()
        await self._transport.send_expiry_message(reply)

    def _is_open(self) -> bool:
        return not self._closed

    async def _close(self, error: WebSocketAuthError) -> None:
        if self._closed:
            return
        self._closed = True
        self._changed.set()
        await self._transport.close_for(error)
