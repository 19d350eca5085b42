"""What of a request must never be shown: the one redaction rule of the platform.

A request carries data that leaves the server in two layers that may not depend on each
other: tool events buffered by ``//dispatch/tools`` and event envelopes sent by
``//websocket/emitter``. Both apply the rule here, so a key that is redacted in one is
redacted in the other (``//context`` is the only package both may depend on).

* :func:`is_sensitive_key` says whether the value under a mapping key names a credential.
  Keys are compared case-insensitively with ``-``, ``.`` and spaces read as ``_`` (so
  ``X-Api-Key``, ``apiKey`` and ``API_KEY`` all match). A key *ending* with ``token``
  (``access_token``, ``refreshToken``) is a credential; ``max_tokens`` or ``token_count``
  are not.
* :func:`redact_credentials` replaces credential-shaped text (``Bearer <...>``, JWTs,
  ``sk-...`` API keys) wherever it appears, even under an innocent key.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "REDACTED",
    "SENSITIVE_KEY_FRAGMENTS",
    "SENSITIVE_KEY_NAMES",
    "SENSITIVE_KEY_SUFFIXES",
    "is_sensitive_key",
    "normalise_key",
    "redact_credentials",
]

#: What replaces a redacted value or credential.
REDACTED: Final = "[REDACTED]"

#: A normalised key containing any of these names a credential.
SENSITIVE_KEY_FRAGMENTS: tuple[str, ...] = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "private_key",
    "privatekey",
    "credential",
)
#: A normalised key ending with any of these names a credential (``access_token``,
#: ``refreshToken``, ``csrf_token``), while ``max_tokens`` or ``token_count`` do not.
SENSITIVE_KEY_SUFFIXES: tuple[str, ...] = ("token",)
#: Normalised keys that name a credential only as a whole word.
SENSITIVE_KEY_NAMES: frozenset[str] = frozenset(
    {"auth", "pwd", "jwt", "bearer", "otp", "session_id", "sessionid", "x_auth"}
)

_KEY_SEPARATORS = re.compile(r"[\s\-.]+")
# "Bearer <credential>" / "Basic <credential>", JWT-shaped strings (three base64url parts,
# the first two starting with '{"' encoded as "eyJ") and "sk-..." API keys. After "bearer"
# or "basic" a credential is a run of token characters holding a digit or one of + / _ ~
# (base64 and random tokens practically always do), or one of 20 or more characters; so
# prose such as "learn basic arithmetic." stays as written.
_OPAQUE_CHARS = r"[A-Za-z0-9\-._~+/]"
_CREDENTIAL_PATTERNS = re.compile(
    r"\b(?i:bearer|basic)\s+"
    rf"(?:(?={_OPAQUE_CHARS}*[0-9_~+/]){_OPAQUE_CHARS}{{8,}}|{_OPAQUE_CHARS}{{20,}})=*"
    r"|\beyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*"
    r"|\bsk-[A-Za-z0-9_\-]{20,}"
)


def normalise_key(key: str) -> str:
    """``key`` as the rule compares it: trimmed, lower case, separators read as ``_``."""
    return _KEY_SEPARATORS.sub("_", key.strip()).lower()


def is_sensitive_key(key: str, extra: frozenset[str] = frozenset()) -> bool:
    """Whether the value under ``key`` must be redacted.

    ``extra`` adds exact key names, already normalised with :func:`normalise_key`.
    """
    normalised = normalise_key(key)
    if normalised in extra or normalised in SENSITIVE_KEY_NAMES:
        return True
    if normalised.endswith(SENSITIVE_KEY_SUFFIXES):
        return True
    squashed = normalised.replace("_", "")
    return any(
        fragment in normalised or fragment.replace("_", "") in squashed
        for fragment in SENSITIVE_KEY_FRAGMENTS
    )


def redact_credentials(text: str) -> str:
    """``text`` with every credential-shaped part replaced by :data:`REDACTED`."""
    return _CREDENTIAL_PATTERNS.sub(REDACTED, text)
