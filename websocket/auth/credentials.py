"""Finding the access token in a handshake, strictly.

Two places are accepted (design section 5):

* the ``Authorization: Bearer <token>`` header (exactly one such header);
* the subprotocols ``jwt-auth`` and ``jwt.<base64url(token)>`` - what browsers can send,
  since their WebSocket API cannot set headers. The token is decoded as strict, unpadded,
  canonical base64url, and its size is bounded before and after decoding.

Everything else is refused, each with its own error: a token in the query string (URLs end
up in proxy and access logs) even when a header token is present too, more than one
credential, a non-Bearer scheme, a token that is not printable ASCII. Pure functions over a
:class:`~websocket.auth.api.HandshakeRequest`; no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from auth.api import AuthErrorCode
from websocket.auth.api import (
    AUTH_SUBPROTOCOL,
    TOKEN_SUBPROTOCOL_PREFIX,
    HandshakeRequest,
    InvalidTokenError,
    MultipleTokensError,
    NoTokenError,
    TokenInQueryStringError,
    TokenSource,
)

__all__ = [
    "DEFAULT_MAX_TOKEN_BYTES",
    "PresentedToken",
    "check_query_string",
    "check_token_text",
    "decode_token_subprotocol",
    "encode_token_subprotocol",
    "extract_token",
    "parse_bearer",
    "select_subprotocol",
]

DEFAULT_MAX_TOKEN_BYTES = 8192

# Query parameter names that carry credentials, compared after lowercasing and dropping
# everything but letters and digits ("access-token", "Access_Token" -> "accesstoken").
_CREDENTIAL_NAMES = frozenset(
    {
        "jwt",
        "auth",
        "authorization",
        "bearer",
        "apikey",
        "accesskey",
        "credential",
        "credentials",
        "sessionid",
        "password",
        "secret",
    }
)
# A JWS compact serialization starts with base64url('{"'), i.e. "eyJ", then has two dots.
_JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_PRINTABLE_TOKEN = re.compile(r"[\x21-\x7e]+")
_MAX_QUERY_FIELDS = 256


@dataclass(frozen=True, slots=True)
class PresentedToken:
    """A token as presented, and where. The token never appears in a repr."""

    token: str = field(repr=False)
    source: TokenSource


def _normalized_name(name: str) -> str:
    return "".join(char for char in name.lower() if char.isalnum())


def _is_credential_name(name: str) -> bool:
    normalized = _normalized_name(name)
    return "token" in normalized or normalized in _CREDENTIAL_NAMES


def check_query_string(path: str) -> None:
    """Refuse a request target whose query string carries a credential.

    Refused: any parameter whose name says credential (``token``, ``access_token``,
    ``jwt``, ``auth``, ``api_key``, ``id_token`` ...), and any name or value that looks
    like a JWT, whatever the parameter is called. Raises :class:`TokenInQueryStringError`.
    """
    query = urlsplit(path).query
    if not query:
        return
    if _JWT_SHAPED.search(unquote(query)):
        raise TokenInQueryStringError
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=_MAX_QUERY_FIELDS)
    except ValueError:
        # More fields than any client of ours sends: refuse rather than guess.
        raise TokenInQueryStringError(
            "The query string has too many parameters to be checked."
        ) from None
    for name, value in pairs:
        if _is_credential_name(name) or _JWT_SHAPED.search(value):
            raise TokenInQueryStringError


def check_token_text(token: str, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES) -> str:
    """``token`` if it is within ``max_bytes`` and printable ASCII without spaces."""
    if len(token) > max_bytes:
        raise InvalidTokenError(
            AuthErrorCode.INVALID_FORMAT, f"The access token is larger than {max_bytes} bytes."
        )
    if _PRINTABLE_TOKEN.fullmatch(token) is None:
        raise InvalidTokenError(
            AuthErrorCode.INVALID_FORMAT, "The access token contains invalid characters."
        )
    return token


def parse_bearer(value: str, *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES) -> str:
    """The token of an ``Authorization`` header value; only ``Bearer <token>`` is accepted."""
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise InvalidTokenError(
            AuthErrorCode.INVALID_FORMAT,
            "The Authorization header must use the Bearer scheme: 'Bearer <token>'.",
        )
    token = credentials.strip()
    if not token:
        raise NoTokenError("The Authorization header carries no token.")
    return check_token_text(token, max_bytes)


def encode_token_subprotocol(token: str) -> str:
    """``jwt.<base64url(token)>``, unpadded: what a client offers next to ``jwt-auth``."""
    encoded = base64.urlsafe_b64encode(token.encode("ascii")).rstrip(b"=").decode("ascii")
    return f"{TOKEN_SUBPROTOCOL_PREFIX}{encoded}"


def decode_token_subprotocol(subprotocol: str, *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES) -> str:
    """The token inside a ``jwt.<base64url(token)>`` subprotocol.

    Only canonical, unpadded base64url is accepted (no ``=``, no other alphabet, no
    non-zero trailing bits), at most ``max_bytes`` once decoded, and the result must be
    printable ASCII without spaces. Raises :class:`InvalidTokenError` otherwise.
    """
    if not subprotocol.startswith(TOKEN_SUBPROTOCOL_PREFIX):
        raise ValueError("not a token subprotocol")
    encoded = subprotocol[len(TOKEN_SUBPROTOCOL_PREFIX) :]
    bad = InvalidTokenError(
        AuthErrorCode.INVALID_FORMAT,
        "The jwt.<token> subprotocol must carry the token as unpadded base64url.",
    )
    # Bound the work before decoding: 4 characters per 3 bytes.
    if not encoded or len(encoded) > -(-max_bytes * 4 // 3):
        if encoded:
            raise InvalidTokenError(
                AuthErrorCode.INVALID_FORMAT,
                f"The access token is larger than {max_bytes} bytes.",
            )
        raise bad
    if _BASE64URL.fullmatch(encoded) is None or len(encoded) % 4 == 1:
        raise bad
    try:
        decoded = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raise bad from None
    if base64.urlsafe_b64encode(decoded).rstrip(b"=").decode("ascii") != encoded:
        raise bad
    try:
        token = decoded.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidTokenError(
            AuthErrorCode.INVALID_FORMAT, "The access token contains invalid characters."
        ) from None
    return check_token_text(token, max_bytes)


def extract_token(
    request: HandshakeRequest, *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES
) -> PresentedToken:
    """The one access token of a handshake.

    Order of checks: the query string first (a token there is refused even when a valid
    header token is present), then each credential place, then uniqueness. Raises
    :class:`TokenInQueryStringError`, :class:`MultipleTokensError`,
    :class:`InvalidTokenError` or :class:`NoTokenError`.
    """
    check_query_string(request.path)
    headers = request.header_values("authorization")
    offered = [p for p in request.subprotocols if p.startswith(TOKEN_SUBPROTOCOL_PREFIX)]
    if len(headers) + len(offered) > 1:
        raise MultipleTokensError
    if headers:
        return PresentedToken(
            parse_bearer(headers[0], max_bytes=max_bytes), TokenSource.AUTHORIZATION_HEADER
        )
    if offered:
        return PresentedToken(
            decode_token_subprotocol(offered[0], max_bytes=max_bytes), TokenSource.SUBPROTOCOL
        )
    raise NoTokenError


def select_subprotocol(offered: tuple[str, ...] | list[str]) -> str | None:
    """``jwt-auth`` when the client offered it, else no subprotocol.

    The ``jwt.<token>`` subprotocol is never selected: the response would echo the token.
    """
    return AUTH_SUBPROTOCOL if AUTH_SUBPROTOCOL in offered else None
