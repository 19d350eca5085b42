"""Checks applied to every argument before it reaches a backend.

Each returns the value in the form that is stored (plain ``str``/``dict``, never a
subclass) or raises :class:`~data.api.InvalidInputError` with a message that names the
field and, at most, a shortened form of the offending value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from context import InvalidContextError
from context.errors import describe_value
from context.execution_context import check_context_id
from data.api import (
    MAX_JSON_BYTES,
    MAX_LIST_LIMIT,
    MAX_LOOKUP_ID_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    InvalidInputError,
)

__all__ = [
    "MAX_SEQ",
    "check_duration",
    "check_json_object",
    "check_limit",
    "check_lookup_id",
    "check_new_id",
    "check_seq",
    "check_tags",
    "check_text",
]

MAX_SEQ = 2**63 - 1


def check_text(value: object, field: str, max_length: int, *, allow_empty: bool = True) -> str:
    """A str of at most ``max_length`` characters, encodable as UTF-8, without NUL."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{field} must be a string, got {describe_value(value)}")
    text = str.__str__(value)
    if not allow_empty and not text.strip():
        raise InvalidInputError(f"{field} must not be empty")
    if len(text) > max_length:
        raise InvalidInputError(f"{field} is longer than {max_length} characters")
    if "\x00" in text:
        raise InvalidInputError(f"{field} must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{field} is not valid Unicode text") from None
    return text


def check_lookup_id(value: object, field: str) -> str:
    """An ID to look up: any non-empty short string (unknown IDs are simply not found)."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{field} must be a string, got {describe_value(value)}")
    text = str.__str__(value)
    if not text:
        raise InvalidInputError(f"{field} must not be empty")
    if len(text) > MAX_LOOKUP_ID_LENGTH:
        raise InvalidInputError(f"{field} is longer than {MAX_LOOKUP_ID_LENGTH} characters")
    return text


def check_new_id(value: object, field: str) -> str:
    """An ID the caller chose for a new object: the same rules as context IDs."""
    try:
        return check_context_id(value, field)
    except InvalidContextError as error:
        raise InvalidInputError(error.message) from None


def check_json_object(value: Mapping[str, Any] | None, field: str) -> dict[str, Any]:
    """A JSON object (str keys, finite numbers) of at most MAX_JSON_BYTES, as plain data."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{field} must be a JSON object, got {describe_value(value)}")
    if not _string_keys(value):
        raise InvalidInputError(f"{field} is not JSON: keys must be strings, values JSON")
    try:
        encoded = json.dumps(dict(value), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{field} is not JSON: keys must be strings, values JSON") from None
    if len(encoded.encode("utf-8", errors="replace")) > MAX_JSON_BYTES:
        raise InvalidInputError(f"{field} is larger than {MAX_JSON_BYTES} bytes as JSON")
    try:
        encoded.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{field} is not valid Unicode text") from None
    decoded: dict[str, Any] = json.loads(encoded)
    if _has_nul(decoded):
        # PostgreSQL's jsonb cannot store U+0000; refuse it on every backend alike.
        raise InvalidInputError(f"{field} must not contain NUL characters")
    return decoded


def _string_keys(value: object) -> bool:
    """Whether every object key, at any depth, is a str (json.dumps would coerce others)."""
    if isinstance(value, Mapping):
        return all(isinstance(key, str) and _string_keys(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return all(_string_keys(item) for item in value)
    return True


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def check_limit(value: object, *, maximum: int = MAX_LIST_LIMIT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"limit must be an integer, got {describe_value(value)}")
    if not 1 <= value <= maximum:
        raise InvalidInputError(f"limit must be between 1 and {maximum}")
    return int(value)


def check_seq(value: object, field: str = "seq", *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{field} must be an integer, got {describe_value(value)}")
    if not minimum <= value <= MAX_SEQ:
        raise InvalidInputError(f"{field} must be between {minimum} and {MAX_SEQ}")
    return int(value)


def check_tags(value: Sequence[str]) -> tuple[str, ...]:
    """Distinct, stripped, non-empty tags in the given order."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidInputError("tags must be a list of strings")
    if len(value) > MAX_TAGS:
        raise InvalidInputError(f"at most {MAX_TAGS} tags are allowed")
    tags: list[str] = []
    for item in value:
        tag = check_text(item, "tag", MAX_TAG_LENGTH, allow_empty=False).strip()
        if tag not in tags:
            tags.append(tag)
    return tuple(tags)


def check_duration(value: object, field: str = "duration_ms") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{field} must be a number, got {describe_value(value)}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise InvalidInputError(f"{field} must be a finite, non-negative number")
    return number
