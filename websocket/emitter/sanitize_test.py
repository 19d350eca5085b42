"""The payload sanitiser: redaction, cutting, summarising, JSON safety."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import JsonValue

from context.redaction import is_sensitive_key
from context.testing import CREDENTIAL_KEYS, INNOCENT_KEYS
from websocket.emitter.sanitize import (
    REDACTED,
    TOO_DEEP,
    PayloadSanitizer,
    SanitizerPolicy,
)

SECRET = "s3cr3t-value-9f8e7d"  # a value that must never survive sanitising


@pytest.fixture
def sanitizer() -> PayloadSanitizer:
    return PayloadSanitizer()


@pytest.mark.parametrize("key", CREDENTIAL_KEYS)
def test_each_sensitive_key_is_redacted_at_top_level_and_nested(
    sanitizer: PayloadSanitizer, key: str
) -> None:
    payload: dict[str, JsonValue] = {
        "tool_name": "http.get",
        "tool_input": {
            key: SECRET,
            "headers": {key: SECRET, "accept": "json"},
            "list": [{"deeper": [{key: {"even": SECRET}}]}],
        },
    }
    clean = sanitizer.sanitize_payload(payload)
    assert SECRET not in json.dumps(clean)
    tool_input = clean["tool_input"]
    assert isinstance(tool_input, dict)
    assert tool_input[key] == REDACTED
    assert tool_input["headers"] == {key: REDACTED, "accept": "json"}
    assert tool_input["list"] == [{"deeper": [{key: REDACTED}]}]


@pytest.mark.parametrize("value", [SECRET, 12345, ["a", SECRET], {"nested": SECRET}, None, True])
def test_the_value_under_a_sensitive_key_is_redacted_whatever_its_type(
    sanitizer: PayloadSanitizer, value: JsonValue
) -> None:
    assert sanitizer.sanitize_value({"password": value}) == {"password": REDACTED}


@pytest.mark.parametrize("key", INNOCENT_KEYS)
def test_values_under_innocent_keys_survive(sanitizer: PayloadSanitizer, key: str) -> None:
    assert sanitizer.sanitize_value({key: 42}) == {key: 42}


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abcdefghijklmnop.qrstuv",
        "use bearer Zm9vYmFyYmF6cXV4 please",
        "token=eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1c3IifQ.c2lnbmF0dXJl",
        "key sk-abcdefghijklmnopqrstuvwxyz123456",
    ],
)
def test_credential_shaped_strings_are_redacted_under_any_key(
    sanitizer: PayloadSanitizer, text: str
) -> None:
    clean = sanitizer.sanitize_value({"note": text})
    assert isinstance(clean, dict)
    note = clean["note"]
    assert isinstance(note, str)
    assert REDACTED in note
    for secret_part in ("abcdefghijklmnop", "Zm9vYmFyYmF6cXV4", "eyJzdWIiOiJ1c3IifQ", "sk-abc"):
        assert secret_part not in note


def test_long_strings_are_cut_with_a_marker(sanitizer: PayloadSanitizer) -> None:
    limit = sanitizer.policy.max_string_length
    clean = sanitizer.sanitize_payload({"thought": "x" * (limit + 500), "message": "short"})
    thought = clean["thought"]
    assert isinstance(thought, str)
    assert thought.startswith("x" * limit)
    assert thought.endswith("...[truncated 500 chars]")
    assert clean["message"] == "short"
    exact = sanitizer.sanitize_payload({"thought": "y" * limit})
    assert exact["thought"] == "y" * limit


def test_long_strings_nested_and_long_keys_are_cut() -> None:
    sanitizer = PayloadSanitizer(SanitizerPolicy(max_string_length=10, max_key_length=5))
    clean = sanitizer.sanitize_value({"k": ["a" * 30], "abcdefghij": 1})
    assert clean == {
        "k": ["a" * 10 + "...[truncated 20 chars]"],
        "abcde...[truncated 5 chars]": 1,
    }


def test_big_object_results_are_summarised(sanitizer: PayloadSanitizer) -> None:
    big: dict[str, JsonValue] = {f"row{i}": "v" * 100 for i in range(500)}
    clean = sanitizer.sanitize_payload(
        {"tool_name": "db.query", "success": True, "result_summary": big}
    )
    summary = clean["result_summary"]
    assert isinstance(summary, dict)
    assert summary["summarized"] is True
    assert summary["type"] == "object"
    assert summary["key_count"] == 500
    assert summary["keys"] == [f"row{i}" for i in range(20)]
    json_bytes = summary["json_bytes"]
    assert isinstance(json_bytes, int)
    assert json_bytes > sanitizer.policy.max_structure_bytes
    assert len(json.dumps(clean)) < 2000


@pytest.mark.parametrize("field", ["result", "result_summary", "tool_input"])
def test_each_structured_field_is_summarised_when_large(field: str) -> None:
    sanitizer = PayloadSanitizer(SanitizerPolicy(max_structure_bytes=100))
    value: JsonValue = {"rows": list(range(100))} if field == "tool_input" else list(range(100))
    clean = sanitizer.sanitize_payload({field: value})
    summary = clean[field]
    assert isinstance(summary, dict)
    assert summary["summarized"] is True
    if field == "tool_input":
        assert summary["type"] == "object"
        assert summary["keys"] == ["rows"]
    else:
        assert summary["type"] == "array"
        assert summary["length"] == 100


def test_small_results_and_free_text_fields_are_not_summarised() -> None:
    sanitizer = PayloadSanitizer(SanitizerPolicy(max_structure_bytes=100))
    clean = sanitizer.sanitize_payload({"result": {"a": 1}, "message": "m" * 150})
    assert clean == {"result": {"a": 1}, "message": "m" * 150}


def test_redaction_happens_before_summarising(sanitizer: PayloadSanitizer) -> None:
    big: dict[str, JsonValue] = {f"k{i}": "v" * 100 for i in range(300)}
    big["api_key"] = SECRET
    clean = sanitizer.sanitize_payload({"result": big})
    assert SECRET not in json.dumps(clean)


def test_non_finite_floats_become_json_safe(sanitizer: PayloadSanitizer) -> None:
    clean = sanitizer.sanitize_value([math.nan, math.inf, -math.inf, 1.5])
    assert clean == ["NaN", "Infinity", "-Infinity", 1.5]
    json.dumps(clean, allow_nan=False)


def test_lone_surrogates_become_encodable(sanitizer: PayloadSanitizer) -> None:
    clean = sanitizer.sanitize_value("ok \ud800 end é")
    assert isinstance(clean, str)
    clean.encode("utf-8")
    assert clean.endswith("end é")


def test_nesting_is_bounded() -> None:
    sanitizer = PayloadSanitizer(SanitizerPolicy(max_depth=3))
    assert sanitizer.sanitize_value({"a": {"b": {"c": {"d": 1}}}}) == {"a": {"b": {"c": TOO_DEEP}}}


def test_extra_sensitive_keys_from_policy() -> None:
    sanitizer = PayloadSanitizer(SanitizerPolicy(extra_sensitive_keys=frozenset({"SSN"})))
    assert sanitizer.sanitize_value({"ssn": "123", "name": "x"}) == {"ssn": REDACTED, "name": "x"}


def test_input_is_not_modified(sanitizer: PayloadSanitizer) -> None:
    payload: dict[str, JsonValue] = {"tool_input": {"password": SECRET, "list": ["x" * 5000]}}
    before = copy.deepcopy(payload)
    sanitizer.sanitize_payload(payload)
    assert payload == before


def test_policy_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_string_length"):
        SanitizerPolicy(max_string_length=0)


_json_leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50)
_json_values = st.recursive(
    _json_leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["a", "b", "password", "Token", "api-key", "x"]), children
        )
    ),
    max_leaves=30,
)


def _values_under_sensitive_keys(value: Any) -> list[Any]:
    found: list[Any] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if is_sensitive_key(key):
                found.append(item)
            else:
                found.extend(_values_under_sensitive_keys(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(_values_under_sensitive_keys(item))
    return found


@given(_json_values)
def test_any_payload_sanitises_to_strict_json_with_every_secret_redacted(value: Any) -> None:
    clean = PayloadSanitizer().sanitize_payload({"result": value})
    json.dumps(clean, allow_nan=False).encode("utf-8")
    assert all(item == REDACTED for item in _values_under_sensitive_keys(clean))
