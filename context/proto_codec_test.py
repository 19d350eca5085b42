"""Tests of the protobuf conversion and the strict ``x-ssot-context`` metadata codec."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import context
from context import context_pb2
from context.errors import ContextCodecError, InvalidContextError
from context.execution_context import MAX_ID_LENGTH, MAX_OPERATION_DEPTH, UserExecutionContext
from context.ids import new_user_id
from context.metadata import MAX_METADATA_BYTES
from context.proto_codec import (
    CONTEXT_METADATA_KEY,
    MAX_ENCODED_CONTEXT_BYTES,
    decode_context_metadata,
    encode_context_metadata,
    from_proto,
    to_proto,
)
from context.testing import contexts


def _ctx() -> UserExecutionContext:
    return UserExecutionContext.from_request(
        new_user_id(), agent_context={"n": 1, "f": 1.0, "list": [True, None]}
    ).create_child_context("op")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _message(**changes: object) -> context_pb2.UserExecutionContext:
    message = to_proto(_ctx())
    for field, value in changes.items():
        setattr(message, field, value)
    return message


@settings(max_examples=150)
@given(ctx=contexts())
def test_proto_round_trip(ctx: UserExecutionContext) -> None:
    message = to_proto(ctx)
    again = from_proto(message)
    assert again == ctx
    assert again.to_dict() == ctx.to_dict()  # ints stay ints, floats stay floats
    parsed = context_pb2.UserExecutionContext.FromString(message.SerializeToString())
    assert from_proto(parsed) == ctx


@settings(max_examples=150)
@given(ctx=contexts())
def test_metadata_codec_round_trip(ctx: UserExecutionContext) -> None:
    encoded = encode_context_metadata(ctx)
    assert encoded.isascii() and "=" not in encoded
    assert set(encoded) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(encoded) <= MAX_ENCODED_CONTEXT_BYTES
    assert decode_context_metadata(encoded) == ctx
    assert decode_context_metadata(encoded.encode("ascii")) == ctx


def test_integer_and_float_metadata_keep_their_types() -> None:
    ctx = _ctx()
    again = decode_context_metadata(encode_context_metadata(ctx))
    assert type(again.agent_context["n"]) is int
    assert type(again.agent_context["f"]) is float
    assert again.agent_context["list"] == (True, None)


def test_package_exports_the_codec_lazily() -> None:
    assert context.CONTEXT_METADATA_KEY == CONTEXT_METADATA_KEY == "x-ssot-context"
    assert context.encode_context_metadata is encode_context_metadata
    assert context.decode_context_metadata is decode_context_metadata
    with pytest.raises(AttributeError):
        _ = context.no_such_name


def test_the_largest_valid_context_fits_in_the_metadata_limit() -> None:
    def long_id(tag: str) -> str:
        return (tag * MAX_ID_LENGTH)[:MAX_ID_LENGTH]

    # \u0001 is escaped as \\u0001 in JSON: six bytes of JSON, then base64 grows it by 4/3.
    filler = "\u0001" * ((MAX_METADATA_BYTES - len('{"k":""}')) // 6)
    ctx = UserExecutionContext(
        user_id=long_id("u"),
        thread_id=long_id("t"),
        run_id=long_id("r"),
        request_id=long_id("q"),
        parent_request_id=long_id("p"),
        operation_depth=MAX_OPERATION_DEPTH,
        created_at=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        websocket_client_id=long_id("w"),
        agent_context={"k": filler},
        audit_metadata={"k": "\U0010ffff" * ((MAX_METADATA_BYTES - 8) // 4)},
    )
    encoded = encode_context_metadata(ctx)
    assert len(encoded) <= MAX_ENCODED_CONTEXT_BYTES
    assert decode_context_metadata(encoded) == ctx


def test_oversize_values_are_refused_before_decoding() -> None:
    valid_prefix = encode_context_metadata(_ctx())
    oversize = valid_prefix + "A" * (MAX_ENCODED_CONTEXT_BYTES + 1 - len(valid_prefix))
    for value in (oversize, oversize.encode("ascii"), "!" * 10_000_000):
        with pytest.raises(ContextCodecError, match="larger than") as caught:
            decode_context_metadata(value)
        assert caught.value.error_code == "INVALID_CONTEXT_ENCODING"
        assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    "bad",
    ["+", "/", "=", " ", "\n", ".", "*", "%", "\x00", "é", "\u202e"],
    ids=lambda char: f"U+{ord(char):04X}",
)
def test_characters_outside_base64url_are_refused(bad: str) -> None:
    encoded = encode_context_metadata(_ctx())
    for value in (encoded[:10] + bad + encoded[10:], bad + encoded, encoded + bad):
        with pytest.raises(ContextCodecError):
            decode_context_metadata(value)
    with pytest.raises(ContextCodecError):
        decode_context_metadata((encoded + bad).encode("utf-8"))


def test_padded_standard_and_non_canonical_base64_are_refused() -> None:
    data = to_proto(_ctx()).SerializeToString()
    padded = base64.urlsafe_b64encode(data[: len(data) - len(data) % 3 - 2]).decode()
    assert padded.endswith("==")
    with pytest.raises(ContextCodecError, match="alphabet"):
        decode_context_metadata(padded)
    standard = base64.b64encode(b"\xfb\xff" + data).decode("ascii").rstrip("=")
    assert standard.startswith("+/")
    with pytest.raises(ContextCodecError, match="alphabet"):
        decode_context_metadata(standard)
    single = _b64(b"A")  # "QQ"; "QR" decodes to the same byte with non-zero spare bits
    assert single == "QQ"
    with pytest.raises(ContextCodecError, match="canonical"):
        decode_context_metadata("QR")
    with pytest.raises(ContextCodecError, match="length"):
        decode_context_metadata("QUFBQ")


@pytest.mark.parametrize("empty", ["", b""])
def test_empty_values_are_refused(empty: str | bytes) -> None:
    with pytest.raises(ContextCodecError, match="empty"):
        decode_context_metadata(empty)


@pytest.mark.parametrize("value", [None, 1, 1.5, ["QQ"], bytearray(b"QQ"), object()])
def test_values_of_other_types_are_refused(value: object) -> None:
    with pytest.raises(ContextCodecError):
        decode_context_metadata(value)  # type: ignore[arg-type]  # hostile on purpose


@settings(max_examples=200)
@given(garbage=st.binary(min_size=1, max_size=600))
def test_base64_of_garbage_protobuf_is_refused(garbage: bytes) -> None:
    with pytest.raises(ContextCodecError):
        decode_context_metadata(_b64(garbage))


@settings(max_examples=200)
@given(value=st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_values_never_raise_anything_but_codec_errors(value: bytes | str) -> None:
    try:
        result = decode_context_metadata(value)
    except ContextCodecError:
        return
    assert isinstance(result, UserExecutionContext)  # only if it really was a valid context


def test_truncated_and_bit_flipped_encodings_yield_codec_errors_or_valid_contexts() -> None:
    data = to_proto(_ctx()).SerializeToString()
    variants = [data[:cut] for cut in range(1, len(data))]
    for index in range(len(data)):
        flipped = bytearray(data)
        flipped[index] ^= 0x80
        variants.append(bytes(flipped))
    refused = 0
    for variant in variants:
        try:
            result = decode_context_metadata(_b64(variant))
        except ContextCodecError:
            refused += 1
        else:  # a cut at a field boundary can still be a complete, valid context
            assert isinstance(result, UserExecutionContext)
    assert refused > len(variants) // 2


def test_unknown_fields_are_refused() -> None:
    data = to_proto(_ctx()).SerializeToString()
    unknown_varint = bytes([(15 << 3) | 0, 1])  # field 15 (not in v1), varint 1
    with pytest.raises(ContextCodecError, match="unknown"):
        decode_context_metadata(_b64(data + unknown_varint))
    message = to_proto(_ctx())
    nested_unknown = message.created_at.SerializeToString() + bytes([(7 << 3) | 0, 5])
    message.created_at.ParseFromString(nested_unknown)
    with pytest.raises(ContextCodecError, match="unknown"):
        from_proto(message)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"user_id": "test"}, "placeholder"),
        ({"user_id": ""}, "user_id must not be empty"),
        ({"thread_id": "mock_thread"}, "placeholder"),
        ({"request_id": "has space in it 0000000"}, "characters"),
        ({"operation_depth": MAX_OPERATION_DEPTH + 1}, "exceeds the maximum"),
        ({"operation_depth": 0}, "parent_request_id must be set"),
        ({"agent_context_json": "[1, 2]"}, "must be a JSON object"),
        ({"agent_context_json": "{not json"}, "not valid JSON"),
        ({"agent_context_json": '{"a": NaN}'}, "not valid JSON"),
        ({"agent_context_json": '{"a": 1e999}'}, "non-finite"),
        ({"agent_context_json": '{"a": 1, "a": 2}'}, "duplicate key"),
        ({"audit_metadata_json": '{"user_id": "usr_victim_000000000000"}'}, "reserved"),
        ({"audit_metadata_json": '{"s": "\\ud800"}'}, "not valid Unicode"),
        ({"audit_metadata_json": "[" * 1500 + "]" * 1500}, "larger than"),
        ({"audit_metadata_json": '{"d":' + "[" * 900 + "]" * 900 + "}"}, "nested"),
        ({"audit_metadata_json": '{"i": 99999999999999999999}'}, "64-bit"),
    ],
)
def test_invalid_field_values_are_refused(changes: dict[str, object], reason: str) -> None:
    message = _message(**changes)
    with pytest.raises((ContextCodecError, InvalidContextError), match=reason):
        from_proto(message)
    with pytest.raises(ContextCodecError, match=reason):
        decode_context_metadata(_b64(message.SerializeToString()))


def test_bad_timestamps_are_refused() -> None:
    missing = _message()
    missing.ClearField("created_at")
    out_of_range = _message()
    out_of_range.created_at.seconds = 253_402_300_800  # year 10000
    bad_nanos = _message()
    bad_nanos.created_at.nanos = 1_000_000_000
    negative_nanos = _message()
    negative_nanos.created_at.nanos = -1
    sub_micro = _message()
    sub_micro.created_at.nanos = 1
    for message, reason in [
        (missing, "missing"),
        (out_of_range, "range"),
        (bad_nanos, "nanos"),
        (negative_nanos, "nanos"),
        (sub_micro, "sub-microsecond"),
    ]:
        with pytest.raises(ContextCodecError, match=reason):
            from_proto(message)
        with pytest.raises(ContextCodecError, match=reason):
            decode_context_metadata(_b64(message.SerializeToString()))


def test_optional_ids_keep_their_presence() -> None:
    root = UserExecutionContext.from_request(new_user_id())
    message = to_proto(root)
    assert not message.HasField("parent_request_id")
    assert not message.HasField("websocket_client_id")
    assert message.agent_context_json == "" and message.audit_metadata_json == ""
    empty_string_parent = to_proto(root)
    empty_string_parent.parent_request_id = ""
    with pytest.raises(InvalidContextError, match="parent_request_id must not be empty"):
        from_proto(empty_string_parent)
    with pytest.raises(ContextCodecError, match=r"expected a ssot\.context\.v1"):
        from_proto(root)  # type: ignore[arg-type]  # hostile on purpose
