"""validate_jwt_format and header parsing: total functions over any input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auth.api import AuthErrorCode, TokenError
from auth.testing import b64json
from auth.token_format import b64url_decode, check_format, parse_header, validate_jwt_format


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "invalid",
        "header.payload",
        "a.b.c.d",
        "a..c",
        ".b.c",
        "a.b.",
        "a b.c.d",
        "a=.b.c",
        "a+b.c.d",
        "a/b.c.d",
        '{"payload":"x"}',
        "a.b.c\n",
        "é.b.c",
        7,
        b"a.b.c",
    ],
)
def test_rejected_shapes(token: object) -> None:
    assert validate_jwt_format(token) is False


def test_accepted_shape_and_size_limit() -> None:
    assert validate_jwt_format("aGVhZGVy.cGF5bG9hZA.c2ln") is True
    token = "a" * 100 + ".bb.cc"
    assert validate_jwt_format(token, max_bytes=len(token)) is True
    assert validate_jwt_format(token, max_bytes=len(token) - 1) is False


def test_segment_lengths_that_cannot_be_base64_are_rejected() -> None:
    assert validate_jwt_format("abcde.b.c") is False  # 5 chars: 4n+1 is never base64


def test_non_canonical_base64_is_not_decoded() -> None:
    with pytest.raises(ValueError, match="base64url"):
        b64url_decode("AB")  # "AB" decodes to one byte whose canonical form is "AA"
    assert b64url_decode("AA") == b"\x00"


def test_header_checks() -> None:
    ok = parse_header(f"{b64json({'alg': 'EdDSA', 'kid': 'k1', 'typ': 'jwt'})}.e30.c2ln")
    assert (ok.alg, ok.kid) == ("EdDSA", "k1")
    with pytest.raises(TokenError) as no_alg:
        parse_header(f"{b64json({'kid': 'k1'})}.e30.c2ln")
    assert no_alg.value.error_code is AuthErrorCode.INVALID_HEADER


@given(st.text(max_size=300))
def test_any_text_is_either_accepted_or_a_token_error(text: str) -> None:
    assert isinstance(validate_jwt_format(text), bool)
    try:
        checked = check_format(text, max_bytes=8192)
        parse_header(checked)
    except TokenError as error:
        assert error.error_code in {
            AuthErrorCode.NO_TOKEN,
            AuthErrorCode.INVALID_FORMAT,
            AuthErrorCode.INVALID_HEADER,
            AuthErrorCode.UNKNOWN_KEY,
        }


@given(
    st.dictionaries(
        st.text(max_size=5),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=3), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=6,
    )
)
def test_any_json_header_is_either_accepted_or_a_token_error(header: dict[str, object]) -> None:
    token = f"{b64json(header)}.e30.c2ln"
    try:
        parsed = parse_header(token)
    except TokenError:
        return
    assert isinstance(parsed.alg, str) and isinstance(parsed.kid, str)
    assert "crit" not in header and "b64" not in header
