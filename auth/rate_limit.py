"""Login and registration rate limits (the ``limits`` library, moving windows).

Memory storage by default; any ``limits`` storage URI (for example ``redis://...``) shares
the windows between processes. Login attempts are limited per account (guessing one
password) and per client address (spraying many accounts).
"""

from __future__ import annotations

import hashlib
import time

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from auth.api import RateLimitedError

__all__ = ["LoginRateLimiter"]

_MESSAGE = "too many attempts, try again later"


def _async_uri(uri: str) -> str:
    return uri if uri.startswith("async+") else f"async+{uri}"


def _digest(value: str) -> str:
    # Identifiers end up as storage keys (possibly in Redis): never the raw email.
    return hashlib.sha256(value.encode()).hexdigest()[:32]


class LoginRateLimiter:
    def __init__(
        self,
        *,
        storage_uri: str = "memory://",
        login_per_account: str,
        login_per_client: str,
        register_per_client: str,
    ) -> None:
        storage = storage_from_string(_async_uri(storage_uri))
        if not isinstance(storage, Storage):
            raise ValueError(f"not an async rate-limit storage: {storage_uri!r}")
        self._limiter = MovingWindowRateLimiter(storage)
        self._login_account = parse(login_per_account)
        self._login_client = parse(login_per_client)
        self._register_client = parse(register_per_client)

    async def _hit(self, item: RateLimitItem, *identifiers: str) -> None:
        if await self._limiter.hit(item, *identifiers):
            return
        stats = await self._limiter.get_window_stats(item, *identifiers)
        raise RateLimitedError(_MESSAGE, retry_after=max(0.0, stats.reset_time - time.time()))

    async def check_login(self, email: str, client_id: str | None) -> None:
        """Count one login attempt; raises :class:`RateLimitedError` over either limit."""
        await self._hit(self._login_account, "login-account", _digest(email))
        if client_id:
            await self._hit(self._login_client, "login-client", _digest(client_id))

    async def check_register(self, client_id: str | None) -> None:
        if client_id:
            await self._hit(self._register_client, "register-client", _digest(client_id))
