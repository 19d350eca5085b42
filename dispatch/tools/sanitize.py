"""What tool events may show of a call: sanitised input and a short result summary.

A tool's arguments come from a model (or a client) and its result from the user's data, so
neither goes into an event untouched:

* :func:`sanitize_tool_input` keeps the argument structure but replaces the value of every
  key that names a credential (``password``, ``access_token``, ``api_key`` ...) with
  ``"[REDACTED]"`` and credential-shaped text (a bearer credential, a JWT) wherever it
  appears, cuts long strings, bounds nesting and container sizes, and turns anything that
  is not JSON (bytes, objects, non-finite numbers) into a short description. What counts
  as a credential is the platform's one rule, :mod:`context.redaction`, which the
  WebSocket emitter applies too;
* :func:`summarize_result` is one bounded line: the compact JSON of a successful result,
  or ``"<status> (<error_code>): <message>"`` of a failed one, credential-shaped text
  redacted.

The WebSocket emitter sanitises envelopes again on its way out; this pass makes sure that
a sink which only buffers (or a log of it) holds nothing it should not either.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from pydantic import JsonValue

from context.redaction import REDACTED, is_sensitive_key, redact_credentials
from dispatch.engine.api import ToolExecutionResult

__all__ = [
    "MAX_INPUT_DEPTH",
    "MAX_INPUT_ITEMS",
    "MAX_INPUT_STRING_CHARS",
    "MAX_SUMMARY_CHARS",
    "REDACTED",
    "sanitize_tool_input",
    "shorten",
    "summarize_result",
]

MAX_INPUT_STRING_CHARS: Final = 1000
MAX_INPUT_ITEMS: Final = 50
MAX_INPUT_DEPTH: Final = 6
MAX_SUMMARY_CHARS: Final = 500
_MAX_KEY_CHARS: Final = 128


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with an ellipsis."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def _describe(value: object) -> str:
    return f"<{type(value).__name__}>"


def _clean_scalar(value: object) -> tuple[bool, JsonValue]:
    """``(True, clean value)`` for a JSON scalar, ``(False, None)`` for anything else."""
    if value is None or isinstance(value, bool):
        return True, value
    if isinstance(value, int):
        return True, int(value)
    if isinstance(value, float):
        return True, float(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return True, shorten(redact_credentials(str.__str__(value)), MAX_INPUT_STRING_CHARS)
    return False, None


def _clean(value: object, depth: int) -> JsonValue:
    scalar, cleaned = _clean_scalar(value)
    if scalar:
        return cleaned
    if depth >= MAX_INPUT_DEPTH:
        return "<nested too deeply>"
    if isinstance(value, Mapping):
        return _clean_mapping(value, depth + 1)
    if isinstance(value, list | tuple):
        items: list[JsonValue] = [_clean(item, depth + 1) for item in value[:MAX_INPUT_ITEMS]]
        if len(value) > MAX_INPUT_ITEMS:
            items.append(f"<{len(value) - MAX_INPUT_ITEMS} more items>")
        return items
    return _describe(value)


def _clean_mapping(value: Mapping[Any, object], depth: int) -> dict[str, JsonValue]:
    cleaned: dict[str, JsonValue] = {}
    for index, (raw_key, item) in enumerate(value.items()):
        if index >= MAX_INPUT_ITEMS:
            cleaned["<truncated>"] = f"<{len(value) - MAX_INPUT_ITEMS} more keys>"
            break
        key = shorten(raw_key if isinstance(raw_key, str) else str(raw_key), _MAX_KEY_CHARS)
        cleaned[key] = REDACTED if is_sensitive_key(key) else _clean(item, depth)
    return cleaned


def sanitize_tool_input(params: Mapping[str, object] | None) -> dict[str, JsonValue]:
    """A JSON-safe, bounded copy of a tool's arguments with credentials redacted."""
    raw: object = params
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        return {"<arguments>": _describe(raw)}
    return _clean_mapping(raw, 1)


def summarize_result(result: ToolExecutionResult, limit: int = MAX_SUMMARY_CHARS) -> str:
    """One bounded line about a tool call's outcome (see the module docstring)."""
    if result.success:
        text = json.dumps(result.result, ensure_ascii=False, separators=(",", ":"))
    else:
        code = f" ({result.error_code})" if result.error_code else ""
        message = f": {result.error_message}" if result.error_message else ""
        text = f"{result.status.value}{code}{message}"
    return shorten(redact_credentials(text), limit)
