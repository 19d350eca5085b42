"""JSON-like metadata for contexts: validation, deep-freezing, canonical JSON.

A context's ``agent_context`` and ``audit_metadata`` are JSON objects. On the way in they are
checked (JSON types only, finite floats, 64-bit integers, valid Unicode, bounded nesting and
size, no reserved keys) and copied into a deep-frozen form: dicts become read-only
``MappingProxyType`` views over private dicts and lists become tuples. Nothing a caller holds,
neither what it passed in nor what it reads back, can change a context afterwards.

The size bound keeps every valid context small enough to travel as one gRPC metadata value
(see ``proto_codec``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TypeAlias

from context.errors import ContextCodecError, InvalidContextError, describe_value

__all__ = [
    "EMPTY_OBJECT",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_NESTING",
    "RESERVED_METADATA_KEYS",
    "JSONObject",
    "JSONValue",
    "dumps_json_object",
    "freeze_json_object",
    "loads_json_object",
    "thaw_json",
]

JSONValue: TypeAlias = (
    "str | int | float | bool | Sequence[JSONValue] | Mapping[str, JSONValue] | None"
)
JSONObject: TypeAlias = Mapping[str, JSONValue]

#: Largest compact UTF-8 JSON encoding of one metadata object.
MAX_METADATA_BYTES = 2048
#: Deepest nesting of containers inside one metadata object (the object itself is level 1).
MAX_METADATA_NESTING = 8
_MIN_INT = -(2**63)
_MAX_INT = 2**63 - 1

#: Keys that name context fields; metadata may not shadow them.
RESERVED_METADATA_KEYS: frozenset[str] = frozenset(
    {
        "user_id",
        "thread_id",
        "run_id",
        "request_id",
        "parent_request_id",
        "created_at",
        "operation_depth",
        "websocket_client_id",
    }
)

EMPTY_OBJECT: JSONObject = MappingProxyType({})


class _Budget:
    """A lower bound on the JSON size spent so far, to stop early on huge input.

    Every amount spent is at most what the value takes in compact JSON, so the budget never
    refuses valid metadata; the exact size is checked once the walk is done.
    """

    __slots__ = ("field", "remaining")

    def __init__(self, field: str) -> None:
        self.field = field
        self.remaining = MAX_METADATA_BYTES

    def spend(self, amount: int) -> None:
        self.remaining -= amount
        if self.remaining < 0:
            raise InvalidContextError(
                f"{self.field} is larger than {MAX_METADATA_BYTES} bytes of JSON"
            )


def _plain_str(value: str, where: str, budget: _Budget) -> str:
    budget.spend(len(value) + 2)
    text = str.__str__(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidContextError(f"{where} contains a string that is not valid Unicode") from None
    return text


def _freeze_scalar(value: object, where: str, budget: _Budget) -> JSONValue:
    if value is None or isinstance(value, bool):
        budget.spend(4)
        return value
    if isinstance(value, int):
        number = int.__int__(value)
        if not _MIN_INT <= number <= _MAX_INT:
            raise InvalidContextError(f"{where} holds an integer outside the signed 64-bit range")
        budget.spend(1)
        return number
    if isinstance(value, float):
        real = float.__float__(value)
        if not math.isfinite(real):
            raise InvalidContextError(f"{where} holds a non-finite float ({real!r})")
        budget.spend(1)
        return real
    if isinstance(value, str):
        return _plain_str(value, where, budget)
    raise InvalidContextError(
        f"{where} holds a {type(value).__name__}; only JSON types are allowed "
        "(str, int, float, bool, None, list, dict with str keys)"
    )


def _freeze(value: object, where: str, level: int, budget: _Budget) -> JSONValue:
    if not isinstance(value, Mapping | list | tuple):
        return _freeze_scalar(value, where, budget)
    if level >= MAX_METADATA_NESTING:
        raise InvalidContextError(f"{where} is nested deeper than {MAX_METADATA_NESTING} levels")
    budget.spend(2)
    if isinstance(value, Mapping):
        return _freeze_mapping(value, where, level + 1, budget)
    items: list[JSONValue] = []
    for index, item in enumerate(value):
        budget.spend(index > 0)  # the comma
        items.append(_freeze(item, f"{where}[{index}]", level + 1, budget))
    return tuple(items)


def _freeze_mapping(
    value: Mapping[object, object], where: str, level: int, budget: _Budget
) -> JSONObject:
    copy: dict[str, JSONValue] = {}
    for index, (key, item) in enumerate(value.items()):
        if not isinstance(key, str):
            raise InvalidContextError(f"{where} has a non-str key {describe_value(key)}")
        plain_key = _plain_str(key, where, budget)
        budget.spend(1 + (index > 0))  # the colon and the comma
        copy[plain_key] = _freeze(item, f"{where}[{describe_value(plain_key)}]", level, budget)
    return MappingProxyType(copy)


def _json_default(value: object) -> object:
    if isinstance(value, MappingProxyType):
        return dict(value)
    raise TypeError(f"not JSON: {type(value).__name__}")  # unreachable for frozen values


def dumps_json_object(value: JSONObject, *, sort_keys: bool = False) -> str:
    """Compact JSON text of a frozen object (``sort_keys=True`` gives the canonical form)."""
    return json.dumps(
        value,
        default=_json_default,
        ensure_ascii=False,
        allow_nan=False,
        separators=(",", ":"),
        sort_keys=sort_keys,
    )


def freeze_json_object(value: object, *, field: str) -> JSONObject:
    """Validate ``value`` as a metadata object and return a deep-frozen private copy.

    ``None`` means an empty object. Raises :class:`InvalidContextError` naming ``field``.
    """
    if value is None:
        return EMPTY_OBJECT
    if not isinstance(value, Mapping):
        raise InvalidContextError(
            f"{field} must be a mapping with str keys, got {describe_value(value)}"
        )
    reserved = sorted(RESERVED_METADATA_KEYS.intersection(value))
    if reserved:
        raise InvalidContextError(
            f"{field} may not use the reserved key(s) {', '.join(reserved)}; "
            "they are fields of the context itself"
        )
    budget = _Budget(field)
    frozen = _freeze(value, field, 0, budget)
    assert isinstance(frozen, Mapping)
    size = len(dumps_json_object(frozen).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise InvalidContextError(f"{field} is larger than {MAX_METADATA_BYTES} bytes of JSON")
    return frozen


def thaw_json(value: JSONValue) -> JSONValue:
    """A plain, mutable deep copy: read-only mappings become dicts, sequences become lists."""
    if isinstance(value, Mapping):
        return {key: thaw_json(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [thaw_json(item) for item in value]
    return value


def _reject_constant(name: str) -> float:
    raise ValueError(f"JSON constant {name} is not allowed")


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, item in pairs:
        if key in result:
            raise ValueError(f"duplicate key {describe_value(key)}")
        result[key] = item
    return result


def loads_json_object(text: str, *, field: str) -> JSONObject:
    """Parse the JSON text of a metadata object strictly; the empty string means ``{}``.

    Oversize text, invalid JSON, duplicate keys, NaN/Infinity and non-object roots raise
    :class:`ContextCodecError`; content that is valid JSON but not valid metadata (reserved
    keys, too deep, integers beyond 64 bits) raises InvalidContextError, as in
    :func:`freeze_json_object`, whose deep-frozen result is returned.
    """
    if text == "":
        return EMPTY_OBJECT
    if len(text) > MAX_METADATA_BYTES or len(text.encode("utf-8", "surrogatepass")) > (
        MAX_METADATA_BYTES
    ):
        raise ContextCodecError(f"{field} is larger than {MAX_METADATA_BYTES} bytes of JSON")
    try:
        parsed = json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError) as exc:
        reason = str(exc)[:120] if isinstance(exc, ValueError) else "nested too deeply"
        raise ContextCodecError(f"{field} is not valid JSON: {reason}") from None
    if not isinstance(parsed, dict):
        raise ContextCodecError(f"{field} must be a JSON object, got {type(parsed).__name__}")
    return freeze_json_object(parsed, field=field)
