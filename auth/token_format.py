"""Syntactic checks of a presented token, before any key or signature is touched.

Only the JWS compact serialization is accepted (RFC 7515 section 7.1): three non-empty
base64url segments without padding, within a size limit. The protected header is parsed
here too, strictly: a JSON object without duplicate members, a string ``alg``, a ``kid``
of a safe shape, no ``crit`` (we implement no extensions, so any critical one is unknown)
and no ``b64`` (unencoded payloads are not accepted). Key-locating headers such as
``jku``, ``x5u``, ``jwk`` and ``x5c`` are never acted on: keys come only from our own store.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from auth.api import AuthErrorCode, TokenError

__all__ = [
    "DEFAULT_MAX_TOKEN_BYTES",
    "KID_PATTERN",
    "ParsedHeader",
    "b64url_decode",
    "b64url_encode",
    "check_format",
    "parse_header",
    "validate_jwt_format",
]

DEFAULT_MAX_TOKEN_BYTES = 8192
KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Decode unpadded base64url; raises ValueError on anything non-canonical."""
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    try:
        decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc
    if b64url_encode(decoded) != segment:
        raise ValueError("non-canonical base64url")
    return decoded


def validate_jwt_format(token: object, *, max_bytes: int = DEFAULT_MAX_TOKEN_BYTES) -> bool:
    """True when ``token`` looks like a compact JWS; never raises.

    ``None``, ``""``, ``"invalid"``, ``"header.payload"``, JSON serializations, padded or
    non-base64url segments and oversized strings are all ``False``.
    """
    if not isinstance(token, str) or not token or len(token) > max_bytes:
        return False
    parts = token.split(".")
    if len(parts) != 3:
        return False
    return all(_SEGMENT.fullmatch(part) and len(part) % 4 != 1 for part in parts)


class ParsedHeader:
    """The checked protected header of a token."""

    __slots__ = ("alg", "kid", "raw")

    def __init__(self, alg: str, kid: str, raw: dict[str, Any]) -> None:
        self.alg = alg
        self.kid = kid
        self.raw = raw


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate member")
        result[key] = value
    return result


def check_format(token: object, *, max_bytes: int) -> str:
    """Return ``token`` as a string or raise :class:`TokenError` (NO_TOKEN / INVALID_FORMAT)."""
    if token is None or token == "":
        raise TokenError("no token presented", error_code=AuthErrorCode.NO_TOKEN)
    if not isinstance(token, str):
        raise TokenError("token is not a string", error_code=AuthErrorCode.INVALID_FORMAT)
    if len(token) > max_bytes:
        raise TokenError("token exceeds the size limit", error_code=AuthErrorCode.INVALID_FORMAT)
    if not validate_jwt_format(token, max_bytes=max_bytes):
        raise TokenError(
            "token is not a compact JWS (three base64url parts)",
            error_code=AuthErrorCode.INVALID_FORMAT,
        )
    return token


def parse_header(token: str) -> ParsedHeader:
    """Decode and check the protected header of a format-checked token."""
    header_segment = token.split(".", 1)[0]
    try:
        raw = json.loads(b64url_decode(header_segment), object_pairs_hook=_reject_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise TokenError(
            "token header is not a JSON object", error_code=AuthErrorCode.INVALID_FORMAT
        ) from exc
    if not isinstance(raw, dict):
        raise TokenError(
            "token header is not a JSON object", error_code=AuthErrorCode.INVALID_FORMAT
        )
    if "crit" in raw:
        raise TokenError(
            "token declares critical header extensions, none are supported",
            error_code=AuthErrorCode.INVALID_HEADER,
        )
    if "b64" in raw:
        raise TokenError(
            "unencoded payloads are not accepted", error_code=AuthErrorCode.INVALID_HEADER
        )
    typ = raw.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
        raise TokenError("token header typ must be JWT", error_code=AuthErrorCode.INVALID_HEADER)
    alg = raw.get("alg")
    if not isinstance(alg, str) or not alg:
        raise TokenError("token header has no algorithm", error_code=AuthErrorCode.INVALID_HEADER)
    kid = raw.get("kid")
    if kid is None:
        raise TokenError("token header names no key", error_code=AuthErrorCode.UNKNOWN_KEY)
    if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
        raise TokenError(
            "token header key id is malformed", error_code=AuthErrorCode.INVALID_HEADER
        )
    return ParsedHeader(alg=alg, kid=kid, raw=raw)
