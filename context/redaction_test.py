"""The platform's redaction rule: which keys name a credential, which text is one."""

from __future__ import annotations

import pytest

from context.redaction import REDACTED, is_sensitive_key, normalise_key, redact_credentials
from context.testing import CREDENTIAL_KEYS, INNOCENT_KEYS


@pytest.mark.parametrize("key", CREDENTIAL_KEYS)
def test_sensitive_keys_are_recognised(key: str) -> None:
    assert is_sensitive_key(key)


@pytest.mark.parametrize("key", INNOCENT_KEYS)
def test_innocent_keys_are_kept(key: str) -> None:
    assert not is_sensitive_key(key)


def test_extra_names_are_compared_normalised() -> None:
    extra = frozenset({normalise_key("Social-Security.Number")})
    assert normalise_key("Social-Security.Number") == "social_security_number"
    assert is_sensitive_key("social security number", extra)
    assert not is_sensitive_key("social security number")


@pytest.mark.parametrize(
    ("text", "secret_part"),
    [
        ("Authorization: Bearer abcdefghijklmnop.qrstuv", "abcdefghijklmnop"),
        ("use bearer Zm9vYmFyYmF6cXV4 please", "Zm9vYmFyYmF6cXV4"),
        ("basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
        ("BEARER abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnop"),
        ("token=eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1c3IifQ.c2lnbmF0dXJl", "eyJzdWIiOiJ1c3IifQ"),
        ("key sk-abcdefghijklmnopqrstuvwxyz123456", "sk-abc"),
    ],
)
def test_credential_shaped_text_is_redacted(text: str, secret_part: str) -> None:
    clean = redact_credentials(text)
    assert REDACTED in clean
    assert secret_part not in clean


@pytest.mark.parametrize(
    "text",
    [
        "a bearer of news",
        "learn basic arithmetic.",
        "Basic well-known facts",
        "BEARER bonds",
        "sk-short",
        "eyJ alone",
        "plain words, 42 of them",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_credentials(text) == text
