"""Hypothesis strategies for property tests of code that handles contexts, and examples
of the redaction rule (:mod:`context.redaction`).

Test-only (imports ``hypothesis``): other packages' tests can draw valid contexts, IDs and
metadata from here instead of re-deriving the validation rules, and check their redaction
with the same credential-naming keys.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

from hypothesis import strategies as st

from context.errors import InvalidContextError
from context.execution_context import MAX_OPERATION_DEPTH, UserExecutionContext
from context.ids import MAX_TIMESTAMP_MS, IDKind, compose_id
from context.metadata import (
    MAX_METADATA_BYTES,
    RESERVED_METADATA_KEYS,
    JSONValue,
    freeze_json_object,
)

__all__ = [
    "CREDENTIAL_KEYS",
    "INNOCENT_KEYS",
    "aware_datetimes",
    "context_ids",
    "contexts",
    "json_values",
    "metadata_objects",
    "unified_ids",
]

#: Keys naming a credential, in the spellings clients and providers use.
CREDENTIAL_KEYS: Final[tuple[str, ...]] = (
    "password",
    "passwd",
    "token",
    "access_token",
    "refresh_token",
    "secret",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "private_key",
    "PASSWORD",
    "Password",
    "pAsSwOrD",
    "Access_Token",
    "accessToken",
    "refreshToken",
    "API_KEY",
    "Api-Key",
    "X-Api-Key",
    "apiKey",
    "Authorization",
    "AUTHORIZATION",
    "Cookie",
    "Set-Cookie",
    "PRIVATE_KEY",
    "privateKey",
    "client_secret",
    "db_password",
    "csrf_token",
    "id_token",
    "auth",
    "credentials",
    " session.id ",
)
#: Keys that look close to one but are not (their values must survive).
INNOCENT_KEYS: Final[tuple[str, ...]] = (
    "max_tokens",
    "token_count",
    "tokens",
    "author",
    "keyword",
    "monkey",
    "name",
    "expression",
    "query",
)

_INT64 = 2**63
_SAFE_ID_CHARS = string.ascii_letters + string.digits + "_.:-"


def unified_ids(kind: IDKind | None = None) -> st.SearchStrategy[str]:
    """Well-formed IDs (of ``kind``, or of any kind), reproducible from hypothesis data."""
    kinds = st.sampled_from(IDKind) if kind is None else st.just(kind)
    return st.builds(
        compose_id,
        kinds,
        st.integers(min_value=0, max_value=MAX_TIMESTAMP_MS),
        st.integers(min_value=0, max_value=2**80 - 1),
    )


def context_ids() -> st.SearchStrategy[str]:
    """Strings a context accepts as an ID: generated IDs and arbitrary safe external IDs."""
    external = st.text(alphabet=_SAFE_ID_CHARS, min_size=20, max_size=128)
    return st.one_of(unified_ids(), external)


def json_values(max_leaves: int = 8) -> st.SearchStrategy[JSONValue]:
    """Nested JSON values of the kinds metadata may hold."""
    scalars: st.SearchStrategy[JSONValue] = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-_INT64, max_value=_INT64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=16),
    )

    def extend(children: st.SearchStrategy[JSONValue]) -> st.SearchStrategy[JSONValue]:
        return st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        )

    return st.recursive(scalars, extend, max_leaves=max_leaves)


def _acceptable(value: dict[str, Any]) -> bool:
    try:
        freeze_json_object(value, field="metadata")
    except InvalidContextError:
        return False
    return True


def metadata_objects() -> st.SearchStrategy[dict[str, Any]]:
    """Plain dicts that are valid ``agent_context`` / ``audit_metadata`` values."""
    keys = st.text(max_size=12).filter(lambda key: key not in RESERVED_METADATA_KEYS)
    objects = st.dictionaries(keys, json_values(), max_size=4)
    return objects.filter(lambda value: len(repr(value)) < 4 * MAX_METADATA_BYTES).filter(
        _acceptable
    )


def aware_datetimes() -> st.SearchStrategy[datetime]:
    """Timezone-aware datetimes (UTC or a fixed offset) a context accepts as created_at."""
    offsets = st.one_of(
        st.just(UTC),
        st.integers(min_value=-23 * 60, max_value=23 * 60).map(
            lambda minutes: timezone(timedelta(minutes=minutes))
        ),
    )
    return st.datetimes(
        min_value=datetime(2, 1, 1),  # bounds of a naive strategy
        max_value=datetime(9998, 12, 31),
        timezones=offsets,
    )


@st.composite
def _contexts(draw: st.DrawFn) -> UserExecutionContext:
    depth = draw(st.integers(min_value=0, max_value=MAX_OPERATION_DEPTH))
    request_id = draw(_CONTEXT_IDS)
    parent = None
    if depth > 0:
        parent = draw(_CONTEXT_IDS.filter(lambda value: value != request_id))
    return UserExecutionContext(
        user_id=draw(_CONTEXT_IDS),
        thread_id=draw(_CONTEXT_IDS),
        run_id=draw(_CONTEXT_IDS),
        request_id=request_id,
        parent_request_id=parent,
        operation_depth=depth,
        created_at=draw(_DATETIMES),
        websocket_client_id=draw(st.none() | _CONTEXT_IDS),
        agent_context=draw(_METADATA),
        audit_metadata=draw(_METADATA),
    )


# Built once: hypothesis validates a strategy object on first use, so reusing them keeps
# property tests fast.
_CONTEXT_IDS = context_ids()
_DATETIMES = aware_datetimes()
_METADATA = metadata_objects()
_CONTEXTS = _contexts()


def contexts() -> st.SearchStrategy[UserExecutionContext]:
    """Valid contexts of any depth, with or without a WebSocket client and metadata."""
    return _CONTEXTS
