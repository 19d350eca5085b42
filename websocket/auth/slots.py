"""Per-user connection slots, taken at the handshake and freed when the connection ends.

The limit is enforced when the token is accepted, not later at registration: between the
two the server awaits I/O, and two concurrent handshakes of one user could otherwise both
see room for one more. :class:`InMemoryConnectionSlots` checks and takes a slot without
awaiting anything in between, which makes it atomic on one event loop; it counts the
connections of one gateway process.
"""

from __future__ import annotations

from websocket.auth.api import ConnectionSlots

__all__ = ["DEFAULT_MAX_CONNECTIONS_PER_USER", "InMemoryConnectionSlots"]

DEFAULT_MAX_CONNECTIONS_PER_USER = 5


class InMemoryConnectionSlots(ConnectionSlots):
    """At most ``limit`` connections per user in this process."""

    def __init__(self, limit: int = DEFAULT_MAX_CONNECTIONS_PER_USER) -> None:
        if limit < 1:
            raise ValueError("the per-user connection limit must be at least 1")
        self._limit = limit
        self._by_user: dict[str, set[str]] = {}
        self._by_connection: dict[str, str] = {}

    @property
    def limit(self) -> int:
        return self._limit

    async def acquire(self, user_id: str, connection_id: str) -> bool:
        if connection_id in self._by_connection:
            raise ValueError("connection already holds a slot")
        held = self._by_user.setdefault(user_id, set())
        if len(held) >= self._limit:
            if not held:
                del self._by_user[user_id]
            return False
        held.add(connection_id)
        self._by_connection[connection_id] = user_id
        return True

    async def release(self, connection_id: str) -> None:
        user_id = self._by_connection.pop(connection_id, None)
        if user_id is None:
            return
        held = self._by_user.get(user_id)
        if held is not None:
            held.discard(connection_id)
            if not held:
                del self._by_user[user_id]

    def count(self, user_id: str) -> int:
        return len(self._by_user.get(user_id, ()))
