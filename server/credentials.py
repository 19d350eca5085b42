"""The access token of each live WebSocket connection, for acting on the user's behalf.

The gateway verifies a connection's token at the handshake and then only keeps the
verified identity. A run the connection starts, though, must reach the agent service *as
that user*: in process the runner needs a :class:`~dispatch.engine.api.ToolCaller` built
from a verified token, and over gRPC the AgentService only accepts the user's own access
token (service tokens are refused: runs act for a user). :class:`ConnectionCredentials`
wraps the gateway's :class:`~websocket.auth.api.UnifiedWebSocketAuth` and remembers, per
admitted connection, the token it presented (and the newer one after a successful
``refresh_token``), until the connection is released.

Tokens stay in this process's memory only: never logged, never in a repr, dropped when
the connection ends. A token is handed out only for a context of the same user as the
connection that presented it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from auth.api import AuthResult
from context.api import UserExecutionContext
from websocket.auth.api import HandshakeRequest, UnifiedWebSocketAuth, WebSocketAuthResult
from websocket.auth.credentials import extract_token

__all__ = ["ConnectionCredentials"]

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Held:
    user_id: str
    token: str = field(repr=False)
    expires_at: float | None


class ConnectionCredentials(UnifiedWebSocketAuth):
    """A :class:`UnifiedWebSocketAuth` that also keeps each connection's access token.

    Everything is delegated to ``inner``; on success the token is recorded under the
    connection ID, on :meth:`release` it is forgotten. :meth:`token_for` gives it back for
    a context of that connection's user.
    """

    def __init__(self, inner: UnifiedWebSocketAuth, *, max_token_bytes: int = 8192) -> None:
        self._inner = inner
        self._max_token_bytes = max_token_bytes
        self._held: dict[str, _Held] = {}

    @property
    def inner(self) -> UnifiedWebSocketAuth:
        return self._inner

    def __len__(self) -> int:
        """How many connections' tokens are held."""
        return len(self._held)

    async def authenticate(self, request: HandshakeRequest) -> WebSocketAuthResult:
        result = await self._inner.authenticate(request)
        # The inner authenticator accepted exactly one token from this request; reading it
        # again cannot fail differently.
        presented = extract_token(request, max_bytes=self._max_token_bytes)
        expires = result.expires_at.timestamp() if result.expires_at is not None else None
        self._held[result.connection_id] = _Held(result.user_id, presented.token, expires)
        return result

    async def revalidate(self, token: str, *, user_id: str) -> AuthResult:
        result = await self._inner.revalidate(token, user_id=user_id)
        expires = result.expires_at.timestamp() if result.expires_at is not None else None
        # The refreshed token is the user's own and verified: every connection of the user
        # holding an older one moves to it.
        for held in self._held.values():
            if held.user_id != user_id:
                continue
            if held.expires_at is None or expires is None or expires >= held.expires_at:
                held.token = token.strip()
                held.expires_at = expires
        return result

    async def release(self, connection_id: str) -> None:
        self._held.pop(connection_id, None)
        await self._inner.release(connection_id)

    def token_for(self, ctx: UserExecutionContext) -> str | None:
        """The access token of the connection ``ctx`` came from, if it is ``ctx``'s user's.

        Falls back to another live connection of the same user (the token is the user's
        either way); ``None`` when the user has no live connection here.
        """
        connection_id = ctx.websocket_client_id
        if connection_id is not None:
            held = self._held.get(connection_id)
            if held is not None:
                if held.user_id != ctx.user_id:
                    log.error(
                        "connection_credentials_user_mismatch",
                        security_event=True,
                        user_id=ctx.user_id,
                        connection_id=connection_id,
                    )
                    return None
                return held.token
        for held in self._held.values():
            if held.user_id == ctx.user_id:
                return held.token
        return None
