"""Sanitising of event payloads before they leave the server.

Events show a user what their agent does, including tool inputs and results, which may
hold credentials or huge data. Every payload passes through :class:`PayloadSanitizer`:

* **Redaction.** The value of any key that names a credential becomes ``"[REDACTED]"``,
  at any depth, whatever the value's type, and credential-shaped strings (a bearer
  credential, a JWT) are redacted wherever they appear, even under an innocent key. The
  rule is the platform's one (:mod:`context.redaction`), shared with the tool events of
  ``//dispatch/tools``; a policy may add key names.
* **Cutting.** Strings longer than ``max_string_length`` are cut and end with a marker
  saying how much was removed. Long dictionary keys are cut the same way.
* **Summarising.** A structured field (``tool_input``, ``result``, ``result_summary``)
  whose JSON exceeds ``max_structure_bytes`` is replaced by a summary of its type, size
  and (for objects) first keys, so a large result never floods a connection.
* **JSON safety.** Non-finite floats become the strings ``"NaN"``, ``"Infinity"`` and
  ``"-Infinity"``; lone surrogates (not encodable as UTF-8) become ``?``; nesting deeper
  than ``max_depth`` becomes ``"[TOO_DEEP]"``.

The sanitiser works on the payload after it passed its model, and its output still
passes the same model (the emitter checks this again when it builds the envelope).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import JsonValue

from context.redaction import REDACTED, is_sensitive_key, normalise_key, redact_credentials

__all__ = [
    "REDACTED",
    "STRUCTURED_FIELDS",
    "TOO_DEEP",
    "PayloadSanitizer",
    "SanitizerPolicy",
]

TOO_DEEP = "[TOO_DEEP]"

#: Payload fields that hold arbitrary structures and are summarised when too large.
STRUCTURED_FIELDS: frozenset[str] = frozenset({"tool_input", "result", "result_summary"})

_SUMMARY_KEYS_SHOWN = 20
_SUMMARY_KEY_LENGTH = 64


@dataclass(frozen=True, slots=True)
class SanitizerPolicy:
    """Bounds of the sanitiser; the defaults suit interactive clients."""

    max_string_length: int = 2000
    max_key_length: int = 256
    max_structure_bytes: int = 16 * 1024
    max_depth: int = 16
    #: More exact key names (compared normalised, see
    #: :func:`context.redaction.is_sensitive_key`).
    extra_sensitive_keys: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for name in ("max_string_length", "max_key_length", "max_structure_bytes", "max_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


def _finite(value: float) -> JsonValue:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


class PayloadSanitizer:
    """Applies a :class:`SanitizerPolicy` to payloads (see the module docstring)."""

    def __init__(self, policy: SanitizerPolicy | None = None) -> None:
        self.policy = policy or SanitizerPolicy()
        self._extra = frozenset(normalise_key(key) for key in self.policy.extra_sensitive_keys)

    def sanitize_payload(self, payload: Mapping[str, JsonValue]) -> dict[str, JsonValue]:
        """A sanitised copy of a validated payload; the input is not changed."""
        result: dict[str, JsonValue] = {}
        for key, value in payload.items():
            clean = self.sanitize_value(value)
            if key in STRUCTURED_FIELDS:
                clean = self._summarise_if_large(clean)
            result[key] = clean
        return result

    def sanitize_value(self, value: JsonValue, depth: int = 0) -> JsonValue:
        """``value`` with credentials redacted, strings cut and floats made JSON-safe."""
        if isinstance(value, str):
            return self._clean_text(value)
        if isinstance(value, float):
            return _finite(value)
        if isinstance(value, dict | list) and depth >= self.policy.max_depth:
            return TOO_DEEP
        if isinstance(value, dict):
            return self._clean_object(value, depth)
        if isinstance(value, list):
            return [self.sanitize_value(item, depth + 1) for item in value]
        return value

    def _clean_object(self, value: Mapping[str, JsonValue], depth: int) -> dict[str, JsonValue]:
        cleaned: dict[str, JsonValue] = {}
        for key, item in value.items():
            name = self._cut(str(key), self.policy.max_key_length)
            if is_sensitive_key(str(key), self._extra):
                cleaned[name] = REDACTED
            else:
                cleaned[name] = self.sanitize_value(item, depth + 1)
        return cleaned

    def _clean_text(self, text: str) -> str:
        if not text.isascii():
            # Lone surrogates cannot be sent as UTF-8; replace them rather than fail later.
            text = text.encode("utf-8", "replace").decode("utf-8")
        return self._cut(redact_credentials(text), self.policy.max_string_length)

    @staticmethod
    def _cut(text: str, limit: int) -> str:
        if len(text) <= limit:
            return text
        return f"{text[:limit]}...[truncated {len(text) - limit} chars]"

    def _summarise_if_large(self, value: JsonValue) -> JsonValue:
        if not isinstance(value, dict | list):
            return value
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size <= self.policy.max_structure_bytes:
            return value
        summary: dict[str, JsonValue] = {
            "summarized": True,
            "type": "object" if isinstance(value, dict) else "array",
            "json_bytes": size,
        }
        if isinstance(value, dict):
            keys: list[JsonValue] = [
                self._cut(key, _SUMMARY_KEY_LENGTH) for key in list(value)[:_SUMMARY_KEYS_SHOWN]
            ]
            summary["key_count"] = len(value)
            summary["keys"] = keys
        else:
            summary["length"] = len(value)
        return summary
