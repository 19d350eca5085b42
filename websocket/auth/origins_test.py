"""The Origin allowlist: absent passes, listed passes, anything else is refused."""

from __future__ import annotations

import pytest

from websocket.auth.api import HandshakeRequest, OriginNotAllowedError, WebSocketAuthErrorCode
from websocket.auth.origins import OriginPolicy, normalize_origin

POLICY = OriginPolicy(["https://app.example.com", "http://localhost:3000"])


def with_origin(*values: str) -> HandshakeRequest:
    return HandshakeRequest(path="/ws", headers=tuple(("Origin", value) for value in values))


def test_request_without_origin_passes() -> None:
    POLICY.check(with_origin())


@pytest.mark.parametrize(
    "origin",
    ["https://app.example.com", "HTTPS://App.Example.COM", "https://app.example.com:443"],
)
def test_allowed_origin_passes_in_any_canonical_spelling(origin: str) -> None:
    POLICY.check(with_origin(origin))


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example.com",
        "http://app.example.com",  # scheme differs
        "https://app.example.com:8443",  # port differs
        "https://app.example.com.evil.com",
        "http://localhost:3001",
        "null",  # opaque origin: sandboxed frames, file: pages
        "",
        "not a url",
    ],
)
def test_disallowed_origin_is_refused(origin: str) -> None:
    with pytest.raises(OriginNotAllowedError) as caught:
        POLICY.check(with_origin(origin))
    assert caught.value.error_code is WebSocketAuthErrorCode.ORIGIN_NOT_ALLOWED
    assert caught.value.close_code == 1008


def test_two_origin_headers_are_refused_even_if_both_allowed() -> None:
    with pytest.raises(OriginNotAllowedError):
        POLICY.check(with_origin("https://app.example.com", "https://app.example.com"))


def test_empty_allowlist_refuses_every_browser_origin() -> None:
    with pytest.raises(OriginNotAllowedError):
        OriginPolicy().check(with_origin("https://app.example.com"))


@pytest.mark.parametrize(
    "configured",
    ["null", "*", "app.example.com", "https://app.example.com/path", "ftp://x.example.com"],
)
def test_invalid_allowlist_entries_are_refused_at_configuration(configured: str) -> None:
    with pytest.raises(ValueError, match="origin"):
        OriginPolicy([configured])


def test_normalize_origin_drops_default_ports_and_lowercases() -> None:
    assert normalize_origin("HTTP://Example.com:80/") == "http://example.com"
    assert normalize_origin("https://[::1]:8443") == "https://[::1]:8443"
