"""The ``Origin`` allowlist, the defence against cross-site WebSocket hijacking.

Browsers send ``Origin`` on every WebSocket handshake and a page cannot forge it; other
clients usually send none. So: a request without ``Origin`` passes this check (its token
still has to be valid), a request with one passes only if the origin is on the allowlist,
and more than one ``Origin`` header (RFC 6454 forbids it) is refused. The opaque origin
``null`` (sandboxed frames, ``file:`` pages) can never be allowed.

Comparison is on the serialized origin ``scheme://host[:port]``, lowercased, with default
ports dropped, exactly as browsers serialize it.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from websocket.auth.api import HandshakeRequest, OriginNotAllowedError

__all__ = ["OriginPolicy", "normalize_origin"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in canonical form; raises ValueError for anything else."""
    text = origin.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"not an origin: {origin!r}") from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if (
        scheme not in _DEFAULT_PORTS
        or not host
        or parts.username is not None
        or parts.password is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(f"not an http(s) origin: {origin!r}")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class OriginPolicy:
    """Checks a handshake's ``Origin`` header against a fixed allowlist."""

    __slots__ = ("_allowed",)

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self._allowed = frozenset(normalize_origin(origin) for origin in allowed)

    @property
    def allowed(self) -> frozenset[str]:
        return self._allowed

    def is_allowed(self, origin: str) -> bool:
        try:
            return normalize_origin(origin) in self._allowed
        except ValueError:
            return False

    def check(self, request: HandshakeRequest) -> None:
        """Raise :class:`OriginNotAllowedError` unless the request's origin is acceptable."""
        values = request.header_values("origin")
        if not values:
            return
        if len(values) > 1:
            raise OriginNotAllowedError("Send at most one Origin header.")
        if not self.is_allowed(values[0]):
            raise OriginNotAllowedError
