"""What tool events show of a call: redaction, bounds and summaries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import cast

from dispatch.engine.api import ToolExecutionResult, ToolStatus
from dispatch.tools.sanitize import (
    MAX_INPUT_DEPTH,
    MAX_INPUT_ITEMS,
    MAX_INPUT_STRING_CHARS,
    MAX_SUMMARY_CHARS,
    REDACTED,
    sanitize_tool_input,
    summarize_result,
)


def test_credential_keys_are_redacted_at_any_depth() -> None:
    cleaned = sanitize_tool_input(
        {
            "query": "cats",
            "password": "p",
            "Authorization": "Bearer abc",
            "deep": [{"client_secret": "s", "refresh_token": "t", "keep": 1}],
        }
    )
    assert cleaned == {
        "query": "cats",
        "password": REDACTED,
        "Authorization": REDACTED,
        "deep": [{"client_secret": REDACTED, "refresh_token": REDACTED, "keep": 1}],
    }


def test_the_rule_is_the_platforms_and_credential_text_is_redacted_anywhere() -> None:
    jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1c3IifQ.c2lnbmF0dXJl"
    cleaned = sanitize_tool_input(
        {
            "X-Api-Key": "k",
            "accessToken": "t",
            "max_tokens": 64,
            "expression": "6*7",
            "note": f"remember {jwt}",
            "items": ["Bearer 9f8e7d6c5b4a3210"],
        }
    )
    assert cleaned["X-Api-Key"] == REDACTED
    assert cleaned["accessToken"] == REDACTED
    assert cleaned["max_tokens"] == 64
    assert cleaned["expression"] == "6*7"
    assert cleaned["note"] == f"remember {REDACTED}"
    assert cleaned["items"] == [REDACTED]


def test_values_are_bounded_and_made_json() -> None:
    deep: object = "leaf"
    for _ in range(MAX_INPUT_DEPTH + 3):
        deep = {"d": deep}
    hostile: dict[object, object] = {
        "long": "y" * (MAX_INPUT_STRING_CHARS * 3),
        "many": list(range(MAX_INPUT_ITEMS + 7)),
        "nan": math.nan,
        "obj": object(),
        "deep": deep,
        7: "non-string key",
    }
    cleaned = sanitize_tool_input(cast("Mapping[str, object]", hostile))
    assert isinstance(cleaned["long"], str) and len(cleaned["long"]) == MAX_INPUT_STRING_CHARS
    many = cleaned["many"]
    assert isinstance(many, list) and len(many) == MAX_INPUT_ITEMS + 1
    assert many[-1] == "<7 more items>"
    assert cleaned["nan"] == "nan"
    assert cleaned["obj"] == "<object>"
    assert "<nested too deeply>" in str(cleaned["deep"])
    assert cleaned["7"] == "non-string key"
    assert sanitize_tool_input(None) == {}


def test_summaries_are_one_bounded_line() -> None:
    ok = ToolExecutionResult(
        status=ToolStatus.SUCCESS,
        tool_name="notes.search",
        tool_call_id="c1",
        result={"notes": ["z" * 2000]},
        execution_time_ms=1.0,
    )
    summary = summarize_result(ok)
    assert summary.startswith('{"notes":["zzz') and len(summary) == MAX_SUMMARY_CHARS
    failed = ToolExecutionResult(
        status=ToolStatus.RATE_LIMITED,
        tool_name="calculator",
        tool_call_id="c2",
        error_code="RATE_LIMITED",
        error_message="slow down",
        execution_time_ms=0.5,
    )
    assert summarize_result(failed) == "rate_limited (RATE_LIMITED): slow down"


def test_summaries_redact_credential_text() -> None:
    jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1c3IifQ.c2lnbmF0dXJl"
    found = ToolExecutionResult(
        status=ToolStatus.SUCCESS,
        tool_name="notes.search",
        tool_call_id="c3",
        result={"notes": [f"my token is {jwt}", "learn basic arithmetic"]},
        execution_time_ms=1.0,
    )
    summary = summarize_result(found)
    assert jwt not in summary
    assert summary == '{"notes":["my token is [REDACTED]","learn basic arithmetic"]}'
