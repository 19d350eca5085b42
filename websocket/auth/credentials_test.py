"""Token extraction: each accepted form, and each hostile form refused with its own error."""

from __future__ import annotations

import base64

import pytest

from auth.api import AuthErrorCode
from websocket.auth.api import (
    HandshakeRequest,
    InvalidTokenError,
    MultipleTokensError,
    NoTokenError,
    TokenInQueryStringError,
    TokenSource,
    WebSocketAuthErrorCode,
)
from websocket.auth.credentials import (
    check_query_string,
    decode_token_subprotocol,
    encode_token_subprotocol,
    extract_token,
    select_subprotocol,
)

# Shaped like a compact JWS; extraction never verifies, so no signature is needed.
TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1c3JfMSJ9.c2lnbmF0dXJl"


def request(
    path: str = "/ws",
    headers: tuple[tuple[str, str], ...] = (),
    subprotocols: tuple[str, ...] = (),
) -> HandshakeRequest:
    return HandshakeRequest(path=path, headers=headers, subprotocols=subprotocols)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# ----- accepted forms -------------------------------------------------------------------------


def test_bearer_header_token_is_extracted() -> None:
    presented = extract_token(request(headers=(("Authorization", f"Bearer {TOKEN}"),)))
    assert presented.token == TOKEN
    assert presented.source is TokenSource.AUTHORIZATION_HEADER


def test_bearer_scheme_is_case_insensitive_and_header_name_too() -> None:
    presented = extract_token(request(headers=(("authorization", f"bearer {TOKEN}"),)))
    assert presented.token == TOKEN


def test_subprotocol_token_is_extracted_and_jwt_auth_selected() -> None:
    offered = ("jwt-auth", encode_token_subprotocol(TOKEN))
    presented = extract_token(request(subprotocols=offered))
    assert presented.token == TOKEN
    assert presented.source is TokenSource.SUBPROTOCOL
    assert select_subprotocol(offered) == "jwt-auth"


def test_token_subprotocol_is_never_selected() -> None:
    assert select_subprotocol((encode_token_subprotocol(TOKEN),)) is None
    assert select_subprotocol(("chat", encode_token_subprotocol(TOKEN))) is None


def test_token_never_appears_in_repr() -> None:
    presented = extract_token(request(headers=(("Authorization", f"Bearer {TOKEN}"),)))
    assert TOKEN not in repr(presented)


def test_handshake_repr_shows_no_credentials() -> None:
    shown = repr(
        request(
            path=f"/ws?token={TOKEN}",
            headers=(("Authorization", f"Bearer {TOKEN}"),),
            subprotocols=("jwt-auth", encode_token_subprotocol(TOKEN)),
        )
    )
    assert "authorization" in shown
    assert TOKEN not in shown
    assert encode_token_subprotocol(TOKEN) not in shown
    assert "token=" not in shown


def test_plain_query_parameters_are_allowed() -> None:
    check_query_string("/ws?client=web&version=3")


# ----- no token -------------------------------------------------------------------------------


def test_no_credentials_is_no_token() -> None:
    with pytest.raises(NoTokenError) as caught:
        extract_token(request(subprotocols=("jwt-auth",)))
    assert caught.value.error_code is WebSocketAuthErrorCode.NO_TOKEN
    assert caught.value.close_code == 1008


def test_bearer_without_token_is_no_token() -> None:
    with pytest.raises(NoTokenError):
        extract_token(request(headers=(("Authorization", "Bearer   "),)))


# ----- query string ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        f"token={TOKEN}",
        f"access_token={TOKEN}",
        f"jwt={TOKEN}",
        f"Access-Token={TOKEN}",
        f"id_token={TOKEN}",
        f"auth={TOKEN}",
        "api_key=abc",
        "token=",  # the name alone is refused, whatever the value
        f"x={TOKEN}",  # JWT-shaped value under an innocent name
        "x=" + TOKEN.replace(".", "%2E"),  # percent-encoded JWT
    ],
)
def test_query_string_token_is_refused(query: str) -> None:
    with pytest.raises(TokenInQueryStringError) as caught:
        extract_token(request(path=f"/ws?{query}"))
    assert caught.value.error_code is WebSocketAuthErrorCode.TOKEN_IN_QUERY_STRING
    assert TOKEN not in caught.value.message


def test_query_string_token_is_refused_even_with_a_valid_header_token() -> None:
    with pytest.raises(TokenInQueryStringError):
        extract_token(
            request(
                path=f"/ws?access_token={TOKEN}",
                headers=(("Authorization", f"Bearer {TOKEN}"),),
            )
        )


def test_query_string_with_too_many_fields_is_refused() -> None:
    with pytest.raises(TokenInQueryStringError):
        check_query_string("/ws?" + "&".join(f"f{i}=1" for i in range(300)))


# ----- ambiguity ------------------------------------------------------------------------------


def test_two_authorization_headers_are_refused() -> None:
    with pytest.raises(MultipleTokensError) as caught:
        extract_token(
            request(
                headers=(
                    ("Authorization", f"Bearer {TOKEN}"),
                    ("Authorization", f"Bearer {TOKEN}x"),
                )
            )
        )
    assert caught.value.error_code is WebSocketAuthErrorCode.MULTIPLE_TOKENS


def test_header_and_subprotocol_token_together_are_refused() -> None:
    with pytest.raises(MultipleTokensError):
        extract_token(
            request(
                headers=(("Authorization", f"Bearer {TOKEN}"),),
                subprotocols=("jwt-auth", encode_token_subprotocol(TOKEN)),
            )
        )


def test_two_token_subprotocols_are_refused() -> None:
    with pytest.raises(MultipleTokensError):
        extract_token(
            request(
                subprotocols=(
                    "jwt-auth",
                    encode_token_subprotocol(TOKEN),
                    encode_token_subprotocol(TOKEN + "x"),
                )
            )
        )


# ----- malformed header -----------------------------------------------------------------------


def test_basic_scheme_is_refused() -> None:
    with pytest.raises(InvalidTokenError) as caught:
        extract_token(request(headers=(("Authorization", "Basic dXNlcjpwYXNz"),)))
    assert caught.value.error_code is WebSocketAuthErrorCode.INVALID_TOKEN
    assert caught.value.auth_error_code is AuthErrorCode.INVALID_FORMAT


def test_header_token_with_inner_space_is_refused() -> None:
    with pytest.raises(InvalidTokenError):
        extract_token(request(headers=(("Authorization", "Bearer abc def"),)))


def test_oversized_header_token_is_refused() -> None:
    with pytest.raises(InvalidTokenError) as caught:
        extract_token(request(headers=(("Authorization", "Bearer " + "a" * 9000),)))
    assert "larger than" in caught.value.message


# ----- malformed subprotocol token ------------------------------------------------------------


@pytest.mark.parametrize(
    "encoded",
    [
        "",  # empty
        b64(TOKEN.encode()) + "==",  # padding
        base64.b64encode(b"\xfb\xff" + TOKEN.encode()).decode().rstrip("="),  # '+' '/'
        "abcde",  # impossible length (4n+1)
        "QR",  # non-zero trailing bits: canonical form of b"A" is "QQ"
        TOKEN,  # the raw token (dots) instead of its base64url
    ],
)
def test_malformed_base64url_subprotocol_is_refused(encoded: str) -> None:
    with pytest.raises(InvalidTokenError) as caught:
        extract_token(request(subprotocols=("jwt-auth", f"jwt.{encoded}")))
    assert caught.value.auth_error_code is AuthErrorCode.INVALID_FORMAT


def test_oversized_subprotocol_token_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidTokenError) as caught:
        decode_token_subprotocol("jwt." + "A" * 20000, max_bytes=8192)
    assert "larger than" in caught.value.message


def test_subprotocol_token_that_decodes_to_non_ascii_is_refused() -> None:
    with pytest.raises(InvalidTokenError):
        decode_token_subprotocol("jwt." + b64("tökén".encode()))


def test_subprotocol_token_with_control_characters_is_refused() -> None:
    with pytest.raises(InvalidTokenError):
        decode_token_subprotocol("jwt." + b64(b"abc\r\nX-Injected: 1"))


def test_encode_decode_round_trip() -> None:
    assert decode_token_subprotocol(encode_token_subprotocol(TOKEN)) == TOKEN
