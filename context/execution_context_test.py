"""Tests of UserExecutionContext: validation, immutability, children, dict round-trip."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import pickle
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context.errors import ContextDepthExceededError, InvalidContextError
from context.execution_context import (
    MAX_OPERATION_DEPTH,
    PLACEHOLDER_ID_PREFIXES,
    PLACEHOLDER_ID_VALUES,
    UserExecutionContext,
)
from context.ids import IDKind, is_valid_id, new_request_id, new_user_id
from context.metadata import MAX_METADATA_BYTES, RESERVED_METADATA_KEYS
from context.testing import contexts, json_values, metadata_objects

_ID_FIELDS = ("user_id", "thread_id", "run_id", "request_id")


def _root(**overrides: Any) -> UserExecutionContext:
    return UserExecutionContext.from_request(new_user_id(), **overrides)


def _fields(**overrides: Any) -> dict[str, Any]:
    base = _root().to_dict()
    base.update(overrides)
    return base


def test_from_request_generates_missing_ids() -> None:
    user_id = new_user_id()
    ctx = UserExecutionContext.from_request(user_id)
    assert ctx.user_id == user_id
    assert is_valid_id(ctx.thread_id, IDKind.THREAD)
    assert is_valid_id(ctx.run_id, IDKind.RUN)
    assert is_valid_id(ctx.request_id, IDKind.REQUEST)
    assert ctx.parent_request_id is None and ctx.operation_depth == 0 and ctx.is_root
    assert ctx.websocket_client_id is None
    assert ctx.agent_context == {} and ctx.audit_metadata == {}
    assert ctx.created_at.tzinfo is UTC
    assert abs(datetime.now(UTC) - ctx.created_at) < timedelta(seconds=60)
    given_ids = UserExecutionContext.from_request(
        "user-from-token-1234567890",
        thread_id="thread:a.b-c_0000000000",
        run_id="run-77-abcdefghijkl",
    )
    assert given_ids.thread_id == "thread:a.b-c_0000000000"
    assert given_ids.run_id == "run-77-abcdefghijkl"


@pytest.mark.parametrize("field", [*_ID_FIELDS, "parent_request_id", "websocket_client_id"])
@pytest.mark.parametrize("placeholder", sorted(PLACEHOLDER_ID_VALUES))
def test_placeholder_id_values_are_rejected(field: str, placeholder: str) -> None:
    for spelling in {placeholder, placeholder.upper(), placeholder.capitalize()}:
        data = _fields(**{field: spelling})
        if field == "parent_request_id":
            data["operation_depth"] = 1
        with pytest.raises(InvalidContextError, match="placeholder"):
            UserExecutionContext.from_dict(data)


def test_the_placeholder_list_is_the_documented_one() -> None:
    assert {
        "registry", "placeholder", "default", "temp", "none", "null", "undefined", "0", "1",
        "xxx", "yyy", "example", "test", "demo", "sample", "template", "mock", "fake", "dummy",
    } == PLACEHOLDER_ID_VALUES  # fmt: skip


@pytest.mark.parametrize("field", _ID_FIELDS)
@pytest.mark.parametrize("prefix", PLACEHOLDER_ID_PREFIXES)
def test_short_ids_with_placeholder_prefixes_are_rejected(field: str, prefix: str) -> None:
    short = (prefix + "abc")[:19]
    for spelling in (short, short.upper()):
        with pytest.raises(InvalidContextError, match="placeholder"):
            UserExecutionContext.from_dict(_fields(**{field: spelling}))
    long_enough = prefix + "x" * (20 - len(prefix))
    assert len(long_enough) == 20
    assert getattr(UserExecutionContext.from_dict(_fields(**{field: long_enough})), field) == (
        long_enough
    )


@pytest.mark.parametrize("which", ["agent_context", "audit_metadata"])
@pytest.mark.parametrize("key", sorted(RESERVED_METADATA_KEYS))
def test_reserved_metadata_keys_are_rejected(which: str, key: str) -> None:
    hostile = {"harmless": 1, key: "usr_someone_else_entirely"}
    with pytest.raises(InvalidContextError, match=f"reserved key.*{key}"):
        _root(**{which: hostile})
    parent = _root()
    with pytest.raises(InvalidContextError, match="reserved"):
        parent.create_child_context("op", **{f"additional_{which}": hostile})
    # Nested below the top level, the same key is ordinary data.
    assert _root(**{which: {"nested": {key: 1}}})


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "x" * 129,
        "user id with spaces",
        "usr\nadmin",
        "usr\x00null",
        "user/../../etc",
        "ユーザー_00000000000000000000",
        "usr_01jdq3v9x4s7k2m8n6p0r5t1wz;",
        None,
        42,
        b"usr_01jdq3v9x4s7k2m8n6p0r5t1wz",
    ],
)
@pytest.mark.parametrize("field", _ID_FIELDS)
def test_malformed_ids_are_rejected(field: str, bad_id: object) -> None:
    with pytest.raises(InvalidContextError, match=field):
        UserExecutionContext.from_dict(_fields(**{field: bad_id}))


class _Opaque:
    pass


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"d": value}
    return value


def _cyclic() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({"s": {1, 2}}, "only JSON types"),
        ({"b": b"bytes"}, "only JSON types"),
        ({"o": _Opaque()}, "only JSON types"),
        ({"f": float("nan")}, "non-finite"),
        ({"f": float("inf")}, "non-finite"),
        ({"i": 2**63}, "64-bit"),
        ({"i": -(2**63) - 1}, "64-bit"),
        ({1: "int key"}, "non-str key"),
        ({"nested": {("t",): 1}}, "non-str key"),
        (_deep(9), "nested deeper"),
        (_cyclic(), "nested deeper"),
        ({"big": "x" * MAX_METADATA_BYTES}, "larger than"),
        ({"many": list(range(10_000))}, "larger than"),
        ({"escaped": "\x00" * 400}, "larger than"),
        ({"surrogate": "\ud800"}, "not valid Unicode"),
        ({"\udfff": 1}, "not valid Unicode"),
        (["not", "a", "mapping"], "must be a mapping"),
        ("{}", "must be a mapping"),
    ],
)
def test_non_json_or_unbounded_metadata_is_rejected(metadata: object, reason: str) -> None:
    with pytest.raises(InvalidContextError, match=reason):
        _root(agent_context=metadata)
    with pytest.raises(InvalidContextError, match=reason):
        _root(audit_metadata=metadata)


def test_metadata_at_the_limits_is_accepted() -> None:
    ctx = _root(agent_context=_deep(8), audit_metadata={"i": 2**63 - 1, "j": -(2**63)})
    assert ctx.audit_metadata["i"] == 2**63 - 1
    filler = "x" * (MAX_METADATA_BYTES - len('{"k":""}'))
    stored = _root(agent_context={"k": filler}).agent_context["k"]
    assert isinstance(stored, str) and len(stored) == len(filler)
    with pytest.raises(InvalidContextError):
        _root(agent_context={"k": filler + "x"})


def test_error_messages_never_echo_huge_input() -> None:
    huge = "A" * 1_000_000
    attempts: list[dict[str, Any]] = [
        _fields(user_id=huge),
        _fields(created_at=huge),
        _fields(**{huge: 1}),
        _fields(agent_context={huge: 1}),
        _fields(agent_context={"k": huge}),
        _fields(audit_metadata={"k": [huge]}),
    ]
    for data in attempts:
        with pytest.raises(InvalidContextError) as caught:
            UserExecutionContext.from_dict(data)
        assert len(str(caught.value)) < 300


def test_fields_cannot_be_assigned_or_deleted() -> None:
    ctx = _root(agent_context={"a": [1]})
    for field in (*_ID_FIELDS, "operation_depth", "created_at", "agent_context", "_key"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(ctx, field, "usr_someone_else_000000000000")
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(ctx, field)
    with pytest.raises((AttributeError, TypeError)):
        ctx.__dict__  # noqa: B018  # slotted: there is no instance dict to edit
    with pytest.raises(TypeError):
        ctx.agent_context["a"] = 2  # type: ignore[index]  # read-only on purpose
    with pytest.raises(AttributeError):
        ctx.agent_context["a"].append(2)  # type: ignore[union-attr]  # tuples do not append


def _mutate_everything(value: Any) -> None:
    """Change every dict and list reachable from ``value`` in place."""
    if isinstance(value, dict):
        for key in list(value):
            _mutate_everything(value[key])
            value[key] = "mutated"
        value["added"] = "mutated"
    elif isinstance(value, list):
        for item in value:
            _mutate_everything(item)
        value.append("mutated")
        value[0] = "mutated"


@settings(max_examples=150)
@given(agent=metadata_objects(), audit=metadata_objects())
def test_context_is_unchanged_by_mutating_what_was_passed_or_read(
    agent: dict[str, Any], audit: dict[str, Any]
) -> None:
    snapshot = json.dumps([agent, audit])
    ctx = _root(agent_context=agent, audit_metadata=audit)
    before = ctx.to_dict()
    _mutate_everything(agent)
    _mutate_everything(audit)
    read_back = ctx.to_dict()
    _mutate_everything(read_back)
    for key in ("agent_context", "audit_metadata"):
        with contextlib.suppress(TypeError):
            getattr(ctx, key)["injected"] = 1
    child = ctx.create_child_context("op", additional_agent_context=json.loads(snapshot)[0])
    _mutate_everything(json.loads(snapshot))
    assert ctx.to_dict() == before
    assert json.dumps([before["agent_context"], before["audit_metadata"]]) == snapshot
    assert UserExecutionContext.from_dict(before) == ctx
    assert child.audit_metadata == ctx.audit_metadata


@settings(max_examples=150)
@given(ctx=contexts())
def test_to_dict_from_dict_round_trip(ctx: UserExecutionContext) -> None:
    data = ctx.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain JSON types only
    again = UserExecutionContext.from_dict(json.loads(json.dumps(data)))
    assert again == ctx
    assert hash(again) == hash(ctx)
    assert again.to_dict() == data
    assert again.created_at == ctx.created_at and again.created_at.tzinfo is UTC


def test_child_chain_links_parents_up_to_the_maximum_depth() -> None:
    root = _root(websocket_client_id="ws_client_000000000000001", agent_context={"agent": "x"})
    chain = [root]
    for depth in range(1, MAX_OPERATION_DEPTH + 1):
        child = chain[-1].create_child_context(f"step_{depth}")
        assert child.operation_depth == depth
        assert child.parent_request_id == chain[-1].request_id
        assert (child.user_id, child.thread_id, child.run_id, child.websocket_client_id) == (
            root.user_id,
            root.thread_id,
            root.run_id,
            root.websocket_client_id,
        )
        assert is_valid_id(child.request_id, IDKind.REQUEST)
        assert child.agent_context["operation_name"] == f"step_{depth}"
        assert child.agent_context["agent"] == "x"
        if depth > 1:
            assert child.agent_context["parent_operation_name"] == f"step_{depth - 1}"
        chain.append(child)
    assert len({ctx.request_id for ctx in chain}) == MAX_OPERATION_DEPTH + 1
    assert chain[-1].operation_depth == MAX_OPERATION_DEPTH == 10
    # The chain can be walked back from the deepest context to the root.
    by_request = {ctx.request_id: ctx for ctx in chain}
    walked = [chain[-1]]
    while walked[-1].parent_request_id is not None:
        walked.append(by_request[walked[-1].parent_request_id])
    assert walked == chain[::-1]


def test_child_beyond_the_maximum_depth_is_refused() -> None:
    ctx = _root()
    for index in range(MAX_OPERATION_DEPTH):
        ctx = ctx.create_child_context(f"op{index}")
    with pytest.raises(ContextDepthExceededError) as caught:
        ctx.create_child_context("one_too_many")
    assert caught.value.error_code == "CONTEXT_DEPTH_EXCEEDED"
    assert isinstance(caught.value, InvalidContextError)
    too_deep = ctx.to_dict() | {"operation_depth": MAX_OPERATION_DEPTH + 1}
    with pytest.raises(ContextDepthExceededError):
        UserExecutionContext.from_dict(too_deep)


@pytest.mark.parametrize("name", ["", "   ", "\t\n", "x" * 129, "bad\nname", 7, None])
def test_child_needs_a_real_operation_name(name: object) -> None:
    with pytest.raises(InvalidContextError, match="operation_name"):
        _root().create_child_context(name)  # type: ignore[arg-type]  # hostile on purpose


def test_child_merges_metadata_without_touching_the_parent() -> None:
    parent = _root(agent_context={"keep": 1, "over": "old"}, audit_metadata={"ip": "10.0.0.1"})
    child = parent.create_child_context(
        "search",
        additional_agent_context={"over": "new", "operation_name": "ignored"},
        additional_audit_metadata={"tool": "search"},
    )
    assert dict(child.agent_context) == {"keep": 1, "over": "new", "operation_name": "search"}
    assert dict(child.audit_metadata) == {"ip": "10.0.0.1", "tool": "search"}
    assert dict(parent.agent_context) == {"keep": 1, "over": "old"}
    assert dict(parent.audit_metadata) == {"ip": "10.0.0.1"}


def test_with_websocket_client_returns_a_new_validated_context() -> None:
    ctx = _root()
    bound = ctx.with_websocket_client("ws_conn_0000000000000042")
    assert bound.websocket_client_id == "ws_conn_0000000000000042"
    assert ctx.websocket_client_id is None
    assert bound.request_id == ctx.request_id and bound.user_id == ctx.user_id
    assert bound != ctx
    assert bound.with_websocket_client(None) == ctx
    with pytest.raises(InvalidContextError, match="websocket_client_id"):
        ctx.with_websocket_client("mock")
    child = bound.create_child_context("op")
    assert child.websocket_client_id == bound.websocket_client_id


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"surprise": 1}, "unknown context field"),
        ({"db_session": None}, "unknown context field"),
        ({"user_id": ...}, "missing context field"),
        ({"created_at": ...}, "missing context field"),
        ({"created_at": "2025-01-01T00:00:00"}, "timezone-aware"),
        ({"created_at": "yesterday"}, "ISO-8601"),
        ({"created_at": 1_700_000_000}, "ISO-8601"),
        ({"created_at": "9999-12-31T23:59:59-05:00"}, "representable"),
        ({"operation_depth": True}, "must be an int"),
        ({"operation_depth": "1"}, "must be an int"),
        ({"operation_depth": 1.0}, "must be an int"),
        ({"operation_depth": -1}, "negative"),
        ({"operation_depth": 2}, "parent_request_id must be set"),
        ({"parent_request_id": "req_parent_0000000000000"}, "parent_request_id must be set"),
        ({"agent_context": "{}"}, "must be a mapping"),
    ],
)
def test_from_dict_is_strict(change: dict[str, Any], reason: str) -> None:
    data = _fields()
    for key, value in change.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    with pytest.raises(InvalidContextError, match=reason):
        UserExecutionContext.from_dict(data)
    with pytest.raises(InvalidContextError, match="must be a mapping"):
        UserExecutionContext.from_dict([("user_id", "x")])  # type: ignore[arg-type]  # hostile


def test_a_context_cannot_be_its_own_parent() -> None:
    data = _fields(operation_depth=1)
    data["parent_request_id"] = data["request_id"]
    with pytest.raises(InvalidContextError, match="differ"):
        UserExecutionContext.from_dict(data)


def test_from_dict_fills_optional_fields() -> None:
    full = _root().to_dict()
    minimal = {key: full[key] for key in ("user_id", "thread_id", "run_id", "request_id")}
    minimal["created_at"] = full["created_at"]
    assert UserExecutionContext.from_dict(minimal) == UserExecutionContext.from_dict(full)


def test_created_at_is_normalised_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=plus_two)
    ctx = dataclasses.replace(_root(), created_at=local)
    assert ctx.created_at == local
    assert ctx.created_at.tzinfo is UTC and ctx.created_at.hour == 10
    assert ctx.to_dict()["created_at"] == "2025-06-01T10:00:00.123456+00:00"
    with pytest.raises(InvalidContextError, match="timezone-aware"):
        dataclasses.replace(ctx, created_at=datetime(2025, 6, 1))  # naive on purpose
    with pytest.raises(InvalidContextError, match="datetime"):
        dataclasses.replace(ctx, created_at="2025-06-01T10:00:00+00:00")  # type: ignore[arg-type]


def test_equality_and_hash_are_by_value() -> None:
    ctx = _root(agent_context={"a": 1, "b": [1, 2]})
    same = UserExecutionContext.from_dict(ctx.to_dict())
    assert ctx == same and hash(ctx) == hash(same) and ctx is not same
    assert len({ctx, same}) == 1
    reordered_metadata = {"b": [1, 2], "a": 1}
    reordered = UserExecutionContext.from_dict(
        ctx.to_dict() | {"agent_context": reordered_metadata}
    )
    assert reordered == ctx and hash(reordered) == hash(ctx)
    for different in ({"a": 1.0, "b": [1, 2]}, {"a": True, "b": [1, 2]}, {"a": 1, "b": [2, 1]}):
        other = UserExecutionContext.from_dict(ctx.to_dict() | {"agent_context": different})
        assert other != ctx
    assert ctx != ctx.to_dict()
    assert dataclasses.replace(ctx, request_id=new_request_id()) != ctx


def test_correlation_id_uses_the_distinguishing_tail_of_each_id() -> None:
    ctx = UserExecutionContext(
        user_id="usr_01jdq3v9x4s7k2m8n6p0r5t1wz",
        thread_id="thr_01jdq3v9x4s7k2m8n6p0r5aaaa",
        run_id="short_id_but_ok_00000001",
        request_id="req_01jdq3v9x4s7k2m8n6p0r5bbbb",
    )
    assert ctx.correlation_id == "p0r5t1wz:p0r5aaaa:00000001:p0r5bbbb"
    other = _root()
    assert len(other.correlation_id.split(":")) == 4
    assert other.correlation_id != _root().correlation_id


def test_pickle_copy_and_deepcopy_preserve_the_value() -> None:
    ctx = _root(agent_context={"a": [1, {"b": None}]}).create_child_context("op")
    assert pickle.loads(pickle.dumps(ctx)) == ctx  # noqa: S301  # our own bytes
    assert copy.copy(ctx) is ctx
    assert copy.deepcopy(ctx) is ctx


class _Envelope(pydantic.BaseModel):
    context: UserExecutionContext


def test_pydantic_models_can_hold_a_context() -> None:
    ctx = _root(agent_context={"n": 1})
    envelope = _Envelope(context=ctx)
    assert envelope.context is ctx
    assert _Envelope.model_validate_json(envelope.model_dump_json()).context == ctx
    assert envelope.model_dump()["context"] == ctx.to_dict()
    with pytest.raises(pydantic.ValidationError, match="placeholder"):
        _Envelope.model_validate({"context": ctx.to_dict() | {"user_id": "test"}})
    with pytest.raises(pydantic.ValidationError):
        _Envelope.model_validate({"context": "usr_x"})
    assert _Envelope.model_json_schema()["properties"]["context"]["type"] == "object"


@settings(max_examples=100)
@given(value=json_values())
def test_any_json_value_survives_freezing_and_thawing(value: Any) -> None:
    ctx = _root(agent_context={"v": value})
    assert ctx.to_dict()["agent_context"]["v"] == value
    assert json.dumps(ctx.to_dict()["agent_context"]["v"]) == json.dumps(value)


@settings(max_examples=100)
@given(
    st.dictionaries(
        st.sampled_from(sorted(RESERVED_METADATA_KEYS)) | st.text(max_size=8),
        st.integers(-5, 5),
        min_size=1,
    ).filter(lambda metadata: not RESERVED_METADATA_KEYS.isdisjoint(metadata))
)
def test_any_reserved_key_combination_is_rejected(metadata: dict[str, int]) -> None:
    with pytest.raises(InvalidContextError, match="reserved"):
        _root(audit_metadata=metadata)
