"""Hostile access tokens, made from real ones: what an attacker can hold and present.

Each function takes a token the real auth service issued and returns a variant that must
be refused: its payload edited under the original signature, re-signed with a key of the
attacker's own (naming the real key ID), or re-labelled ``alg: none``. Built with
:func:`auth.testing.forge_token`, which signs by hand what PyJWT refuses to make.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from auth.testing import b64json, forge_token
from auth.token_format import b64url_decode

__all__ = ["alg_none", "claims_of", "header_of", "hostile_variants", "resigned", "tampered"]


def _segments(token: str) -> tuple[str, str, str]:
    header, payload, signature = token.split(".")
    return header, payload, signature


def header_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(b64url_decode(_segments(token)[0]))
    return decoded


def claims_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(b64url_decode(_segments(token)[1]))
    return decoded


def tampered(token: str, **claims: Any) -> str:
    """``token`` with ``claims`` changed in its payload and the original signature kept."""
    header, _, signature = _segments(token)
    payload = {**claims_of(token), **claims}
    return f"{header}.{b64json(payload)}.{signature}"


def resigned(token: str, **claims: Any) -> str:
    """``token``'s claims (with ``claims`` changed) signed by an attacker's own Ed25519
    key, under the real header (so the real key ID)."""
    payload = {**claims_of(token), **claims}
    return forge_token(header_of(token), payload, key=ed25519.Ed25519PrivateKey.generate())


def alg_none(token: str, **claims: Any) -> str:
    """``token``'s claims (with ``claims`` changed) as an unsigned ``alg: none`` token."""
    header = {**header_of(token), "alg": "none"}
    return forge_token(header, {**claims_of(token), **claims}, key=None)


def hostile_variants(token: str, **claims: Any) -> dict[str, str]:
    """Every hostile form of ``token`` this module makes, by name."""
    return {
        "tampered": tampered(token, **claims),
        "resigned": resigned(token, **claims),
        "alg_none": alg_none(token, **claims),
        "truncated_signature": token[: token.rindex(".") + 8],
        "garbage": "not-a-token",
    }
