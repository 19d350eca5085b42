"""``UserExecutionContext``: the immutable identity of one request of one user.

A context names who is acting (``user_id``), in which conversation (``thread_id``), in which
agent run (``run_id``) and for which request (``request_id``); child contexts for nested
operations link to their parent through ``parent_request_id`` and count ``operation_depth``.
Every service receives its context explicitly or through :mod:`context.current`, and every
per-user decision (data access, events, limits) is keyed by it.

Immutability is enforced, not promised: the class is a frozen, slotted dataclass; metadata is
deep-copied and deep-frozen on construction (see :mod:`context.metadata`); every "change"
(``create_child_context``, ``with_websocket_client``, ``dataclasses.replace``) builds a new,
fully re-validated context.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from context.errors import ContextDepthExceededError, InvalidContextError, describe_value
from context.ids import new_request_id, new_run_id, new_thread_id
from context.metadata import (
    EMPTY_OBJECT,
    JSONObject,
    JSONValue,
    dumps_json_object,
    freeze_json_object,
    thaw_json,
)

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_OPERATION_DEPTH",
    "PLACEHOLDER_ID_PREFIXES",
    "PLACEHOLDER_ID_VALUES",
    "UserExecutionContext",
    "check_context_id",
]

#: The deepest allowed ``operation_depth``; a child of a context at this depth is refused.
MAX_OPERATION_DEPTH = 10
MAX_ID_LENGTH = 128
_MAX_OPERATION_NAME_LENGTH = 128
_MAX_TIMESTAMP_TEXT = 64
_SAFE_ID = re.compile(r"[A-Za-z0-9_.:\-]+")

#: Values that are never real IDs; compared case-insensitively.
PLACEHOLDER_ID_VALUES: frozenset[str] = frozenset(
    {
        "registry",
        "placeholder",
        "default",
        "temp",
        "none",
        "null",
        "undefined",
        "0",
        "1",
        "xxx",
        "yyy",
        "example",
        "test",
        "demo",
        "sample",
        "template",
        "mock",
        "fake",
        "dummy",
    }
)
#: Prefixes that mark a short (< 20 chars) ID as a placeholder; compared case-insensitively.
PLACEHOLDER_ID_PREFIXES: tuple[str, ...] = (
    "placeholder_",
    "registry_",
    "default_",
    "temp_",
    "test_",
    "example_",
    "demo_",
    "sample_",
    "template_",
    "mock_",
    "fake_",
)
_PLACEHOLDER_PREFIX_MAX_LENGTH = 20

_FIELD_NAMES: tuple[str, ...] = (
    "user_id",
    "thread_id",
    "run_id",
    "request_id",
    "parent_request_id",
    "operation_depth",
    "created_at",
    "websocket_client_id",
    "agent_context",
    "audit_metadata",
)
_REQUIRED_DICT_KEYS = frozenset({"user_id", "thread_id", "run_id", "request_id", "created_at"})


def check_context_id(value: object, field: str) -> str:
    """Return ``value`` as a plain str if it is acceptable as a context ID field.

    Accepted: 1..128 characters from ``[A-Za-z0-9_.:-]``, not a placeholder value
    (``"test"``, ``"none"``, ``"0"`` ...), and, when shorter than 20 characters, not starting
    with a placeholder prefix (``"test_"``, ``"mock_"`` ...). Raises InvalidContextError.
    """
    if not isinstance(value, str):
        raise InvalidContextError(f"{field} must be a str, got {describe_value(value)}")
    text = str.__str__(value)
    if not text:
        raise InvalidContextError(f"{field} must not be empty")
    if len(text) > MAX_ID_LENGTH:
        raise InvalidContextError(f"{field} is longer than {MAX_ID_LENGTH} characters")
    if _SAFE_ID.fullmatch(text) is None:
        raise InvalidContextError(
            f"{field} {describe_value(text)} contains characters outside [A-Za-z0-9_.:-]"
        )
    lowered = text.lower()
    if lowered in PLACEHOLDER_ID_VALUES:
        raise InvalidContextError(f"{field} {text!r} is a placeholder, not a real ID")
    if len(text) < _PLACEHOLDER_PREFIX_MAX_LENGTH and lowered.startswith(PLACEHOLDER_ID_PREFIXES):
        raise InvalidContextError(f"{field} {text!r} looks like a placeholder ID")
    return text


def _check_optional_id(value: object, field: str) -> str | None:
    return None if value is None else check_context_id(value, field)


def _check_depth(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidContextError(f"operation_depth must be an int, got {describe_value(value)}")
    depth = int.__int__(value)
    if depth < 0:
        raise InvalidContextError("operation_depth must not be negative")
    if depth > MAX_OPERATION_DEPTH:
        raise ContextDepthExceededError(
            f"operation_depth {depth} exceeds the maximum of {MAX_OPERATION_DEPTH}"
        )
    return depth


def _check_created_at(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidContextError(f"created_at must be a datetime, got {describe_value(value)}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidContextError("created_at must be timezone-aware")
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise InvalidContextError("created_at is outside the representable UTC range") from None
    # Rebuild as a plain datetime: drops datetime subclasses and any fold flag.
    return datetime(
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
        utc.microsecond,
        tzinfo=UTC,
    )


def _parse_created_at(value: object) -> datetime:
    if isinstance(value, datetime):
        return _check_created_at(value)
    if not isinstance(value, str):
        raise InvalidContextError(
            f"created_at must be an ISO-8601 string, got {describe_value(value)}"
        )
    if len(value) > _MAX_TIMESTAMP_TEXT:
        raise InvalidContextError("created_at is too long to be an ISO-8601 timestamp")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidContextError(
            f"created_at {describe_value(value)} is not an ISO-8601 timestamp"
        ) from None
    return _check_created_at(parsed)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _empty_object() -> JSONObject:
    return EMPTY_OBJECT


def _tail(value: str) -> str:
    return value[-8:]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class UserExecutionContext:
    """Immutable identity of one request of one user. See the module docstring.

    Construct with :meth:`from_request` (generates missing IDs), :meth:`create_child_context`
    or :meth:`from_dict`; the plain constructor validates the same way. Invalid input raises
    :class:`~context.errors.InvalidContextError`. Equality and hashing are by value
    (metadata compared as canonical JSON, so ``1``, ``1.0`` and ``true`` differ).
    Read metadata as read-only mappings and tuples; :meth:`to_dict` gives plain copies.
    """

    user_id: str
    thread_id: str
    run_id: str
    request_id: str = dataclasses.field(default_factory=new_request_id)
    parent_request_id: str | None = None
    operation_depth: int = 0
    created_at: datetime = dataclasses.field(default_factory=_utc_now)
    websocket_client_id: str | None = None
    agent_context: JSONObject = dataclasses.field(default_factory=_empty_object)
    audit_metadata: JSONObject = dataclasses.field(default_factory=_empty_object)
    _key: tuple[object, ...] = dataclasses.field(init=False, repr=False, compare=False)

    MAX_OPERATION_DEPTH: ClassVar[int] = MAX_OPERATION_DEPTH

    def __post_init__(self) -> None:
        setter = object.__setattr__
        setter(self, "user_id", check_context_id(self.user_id, "user_id"))
        setter(self, "thread_id", check_context_id(self.thread_id, "thread_id"))
        setter(self, "run_id", check_context_id(self.run_id, "run_id"))
        setter(self, "request_id", check_context_id(self.request_id, "request_id"))
        parent = _check_optional_id(self.parent_request_id, "parent_request_id")
        setter(self, "parent_request_id", parent)
        depth = _check_depth(self.operation_depth)
        setter(self, "operation_depth", depth)
        if (parent is None) != (depth == 0):
            raise InvalidContextError(
                "parent_request_id must be set exactly when operation_depth > 0"
            )
        if parent == self.request_id:
            raise InvalidContextError("parent_request_id must differ from request_id")
        setter(self, "created_at", _check_created_at(self.created_at))
        websocket_id = _check_optional_id(self.websocket_client_id, "websocket_client_id")
        setter(self, "websocket_client_id", websocket_id)
        agent_context = freeze_json_object(self.agent_context, field="agent_context")
        audit_metadata = freeze_json_object(self.audit_metadata, field="audit_metadata")
        setter(self, "agent_context", agent_context)
        setter(self, "audit_metadata", audit_metadata)
        setter(
            self,
            "_key",
            (
                self.user_id,
                self.thread_id,
                self.run_id,
                self.request_id,
                parent,
                depth,
                self.created_at,
                websocket_id,
                dumps_json_object(agent_context, sort_keys=True),
                dumps_json_object(audit_metadata, sort_keys=True),
            ),
        )

    # -- value semantics -------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserExecutionContext):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Self:
        return self

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        # Read-only mappings cannot be pickled; travel as the validated dict form instead.
        return (type(self).from_dict, (self.to_dict(),))

    # -- factories -------------------------------------------------------------------------

    @classmethod
    def from_request(
        cls,
        user_id: str,
        *,
        thread_id: str | None = None,
        run_id: str | None = None,
        request_id: str | None = None,
        websocket_client_id: str | None = None,
        agent_context: Mapping[str, object] | None = None,
        audit_metadata: Mapping[str, object] | None = None,
    ) -> Self:
        """A root context (depth 0) for a new request of ``user_id``.

        Missing thread, run and request IDs are generated by the ID manager. ``user_id``
        must come from a verified credential, never from a request body.
        """
        return cls(
            user_id=user_id,
            thread_id=new_thread_id() if thread_id is None else thread_id,
            run_id=new_run_id() if run_id is None else run_id,
            request_id=new_request_id() if request_id is None else request_id,
            websocket_client_id=websocket_client_id,
            agent_context=freeze_json_object(agent_context, field="agent_context"),
            audit_metadata=freeze_json_object(audit_metadata, field="audit_metadata"),
        )

    def create_child_context(
        self,
        operation_name: str,
        *,
        additional_agent_context: Mapping[str, object] | None = None,
        additional_audit_metadata: Mapping[str, object] | None = None,
    ) -> Self:
        """A context for a nested operation: same user, thread, run and WebSocket client;
        a new request_id; ``parent_request_id`` = this request_id; depth + 1.

        The child's agent_context is this one's, updated with ``additional_agent_context``
        and then with ``operation_name`` and ``parent_operation_name`` (the parent's
        ``operation_name``, when it has one). Audit metadata is merged the same way.
        Raises ContextDepthExceededError when this context is already at the maximum depth.
        """
        if not isinstance(operation_name, str) or not operation_name.strip():
            raise InvalidContextError("operation_name must be a non-empty string")
        if len(operation_name) > _MAX_OPERATION_NAME_LENGTH:
            raise InvalidContextError(
                f"operation_name is longer than {_MAX_OPERATION_NAME_LENGTH} characters"
            )
        if not operation_name.isprintable():
            raise InvalidContextError("operation_name contains non-printable characters")
        if self.operation_depth >= MAX_OPERATION_DEPTH:
            raise ContextDepthExceededError(
                f"cannot create child context {operation_name!r}: depth "
                f"{self.operation_depth} is already the maximum of {MAX_OPERATION_DEPTH}"
            )
        agent_context: dict[str, JSONValue] = dict(self.agent_context)
        agent_context.update(
            freeze_json_object(additional_agent_context, field="additional_agent_context")
        )
        parent_operation = self.agent_context.get("operation_name")
        if parent_operation is not None:
            agent_context["parent_operation_name"] = parent_operation
        agent_context["operation_name"] = str.__str__(operation_name)
        audit_metadata: dict[str, JSONValue] = dict(self.audit_metadata)
        audit_metadata.update(
            freeze_json_object(additional_audit_metadata, field="additional_audit_metadata")
        )
        return type(self)(
            user_id=self.user_id,
            thread_id=self.thread_id,
            run_id=self.run_id,
            request_id=new_request_id(),
            parent_request_id=self.request_id,
            operation_depth=self.operation_depth + 1,
            websocket_client_id=self.websocket_client_id,
            agent_context=agent_context,
            audit_metadata=audit_metadata,
        )

    def with_websocket_client(self, client_id: str | None) -> Self:
        """The same context bound to another WebSocket client (``None`` unbinds)."""
        return dataclasses.replace(self, websocket_client_id=client_id)

    # -- derived values --------------------------------------------------------------------

    @property
    def correlation_id(self) -> str:
        """A short log-correlation key: the last 8 characters of user, thread, run and
        request ID, joined with ``:``.

        The tail, not the head: generated IDs start with a kind prefix and a timestamp that
        every ID of the same day shares, while their last characters are random.
        """
        return ":".join(
            _tail(part) for part in (self.user_id, self.thread_id, self.run_id, self.request_id)
        )

    @property
    def is_root(self) -> bool:
        """Whether this is a request's top-level context (depth 0, no parent)."""
        return self.operation_depth == 0

    # -- dict form -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain, mutable, JSON-compatible deep copy; ``created_at`` as ISO-8601 UTC."""
        return {
            "user_id": self.user_id,
            "thread_id": self.thread_id,
            "run_id": self.run_id,
            "request_id": self.request_id,
            "parent_request_id": self.parent_request_id,
            "operation_depth": self.operation_depth,
            "created_at": self.created_at.isoformat(),
            "websocket_client_id": self.websocket_client_id,
            "agent_context": thaw_json(self.agent_context),
            "audit_metadata": thaw_json(self.audit_metadata),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild a context from :meth:`to_dict` output, strictly.

        Unknown keys are refused; user_id, thread_id, run_id, request_id and created_at are
        required; the other keys may be left out (meaning None, 0 or empty). Everything is
        validated as in the constructor. ``created_at`` is an ISO-8601 string with an offset
        (or an aware datetime).
        """
        if not isinstance(data, Mapping):
            raise InvalidContextError(
                f"a context dict must be a mapping, got {describe_value(data)}"
            )
        keys = set(data)
        unknown = keys.difference(_FIELD_NAMES)
        if unknown:
            shown = ", ".join(sorted(describe_value(key) for key in unknown)[:5])
            raise InvalidContextError(f"unknown context field(s): {shown}")
        missing = _REQUIRED_DICT_KEYS.difference(keys)
        if missing:
            raise InvalidContextError(f"missing context field(s): {', '.join(sorted(missing))}")
        return cls(
            user_id=data["user_id"],
            thread_id=data["thread_id"],
            run_id=data["run_id"],
            request_id=data["request_id"],
            parent_request_id=data.get("parent_request_id"),
            operation_depth=data.get("operation_depth", 0),
            created_at=_parse_created_at(data["created_at"]),
            websocket_client_id=data.get("websocket_client_id"),
            agent_context=freeze_json_object(data.get("agent_context"), field="agent_context"),
            audit_metadata=freeze_json_object(data.get("audit_metadata"), field="audit_metadata"),
        )

    # -- pydantic integration --------------------------------------------------------------

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: object, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """Let pydantic models hold a context: instances pass through, dicts go through
        :meth:`from_dict`, and serialization uses :meth:`to_dict`."""
        return core_schema.no_info_plain_validator_function(
            cls._pydantic_validate,
            serialization=core_schema.plain_serializer_function_ser_schema(cls._pydantic_serialize),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        nullable_id = {"anyOf": [{"type": "string"}, {"type": "null"}]}
        return {
            "type": "object",
            "title": "UserExecutionContext",
            "properties": {
                "user_id": {"type": "string"},
                "thread_id": {"type": "string"},
                "run_id": {"type": "string"},
                "request_id": {"type": "string"},
                "parent_request_id": nullable_id,
                "operation_depth": {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": MAX_OPERATION_DEPTH,
                },
                "created_at": {"type": "string", "format": "date-time"},
                "websocket_client_id": nullable_id,
                "agent_context": {"type": "object"},
                "audit_metadata": {"type": "object"},
            },
            "required": sorted(_REQUIRED_DICT_KEYS),
            "additionalProperties": False,
        }

    @classmethod
    def _pydantic_validate(cls, value: object) -> UserExecutionContext:
        if isinstance(value, UserExecutionContext):
            return value
        if not isinstance(value, Mapping):
            raise ValueError("expected a UserExecutionContext or its dict form")
        try:
            return cls.from_dict(value)
        except InvalidContextError as exc:
            # pydantic turns ValueError into a ValidationError for the enclosing model.
            raise ValueError(exc.message) from exc

    @staticmethod
    def _pydantic_serialize(value: UserExecutionContext) -> dict[str, Any]:
        return value.to_dict()
