"""Typed, prefixed, time-ordered IDs: the ``UnifiedIDManager``.

An ID is ``<prefix>_<26 chars>``, for example ``usr_01jdq3v9x4s7k2m8n6p0r5t1wz``. The prefix
says what the ID names (:class:`IDKind`); the 26 characters are a ULID-layout value in
lowercase Crockford base32: a 48-bit Unix time in milliseconds followed by 80 bits from the
operating system's CSPRNG (``secrets``/``os.urandom``).

Why this layout:

* IDs sort by creation time (lexicographically, as strings), which keeps database indexes
  append-mostly and makes logs readable.
* Processes need no coordination to stay collision-free: two processes that generate in the
  same millisecond still differ in 80 random bits.
* Within one process IDs are strictly monotonic: when the clock has not advanced (same
  millisecond, or the clock stepped back) the previous value is incremented by a random
  step of 1..2**32 instead of drawing fresh randomness. Strictly increasing values cannot
  repeat, and the random step keeps a burst of IDs from being guessable from one of them.
  If the 80 random bits overflow, the carry moves into the timestamp, which only happens
  after ~2**48 IDs in one millisecond.
* After ``os.fork()`` the child forgets the parent's last value, so parent and child never
  continue from the same point.

Only the canonical spelling is valid (lowercase, no Crockford aliases such as ``I``/``L``/
``O``), so one ID has exactly one string form and string equality is ID equality.
"""

from __future__ import annotations

import enum
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from context.errors import InvalidIDError, describe_value

__all__ = [
    "BODY_LENGTH",
    "CROCKFORD_ALPHABET",
    "MAX_TIMESTAMP_MS",
    "IDKind",
    "ParsedID",
    "UnifiedIDManager",
    "compose_id",
    "get_id_manager",
    "is_valid_id",
    "new_id",
    "new_request_id",
    "new_run_id",
    "new_thread_id",
    "new_user_id",
    "parse_id",
    "validate_id",
]

CROCKFORD_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
BODY_LENGTH = 26
_RANDOM_BITS = 80
_RANDOM_MASK = (1 << _RANDOM_BITS) - 1
_MAX_VALUE = (1 << 128) - 1
_MAX_STEP_BITS = 32
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The last millisecond a ``datetime`` can represent (9999-12-31T23:59:59.999Z). The 48-bit
# field reaches further (year 10889), but an ID whose time cannot be a datetime is refused.
MAX_TIMESTAMP_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - _EPOCH) // timedelta(
    milliseconds=1
)
_DECODE = {char: index for index, char in enumerate(CROCKFORD_ALPHABET)}
# 26 base32 chars carry 130 bits; a 128-bit value leaves the top two bits zero.
_MAX_FIRST_CHAR = "7"


class IDKind(enum.StrEnum):
    """What an ID names; the value is the ID's prefix."""

    USER = "usr"
    THREAD = "thr"
    RUN = "run"
    REQUEST = "req"
    WEBSOCKET = "ws"
    TOOL = "tool"
    AGENT = "agt"
    SESSION = "ses"
    CONNECTION = "conn"
    SERVICE = "svc"
    MESSAGE = "msg"
    NOTE = "note"
    EVENT = "evt"


_KIND_BY_PREFIX: dict[str, IDKind] = {kind.value: kind for kind in IDKind}
_MAX_ID_LENGTH = max(len(prefix) for prefix in _KIND_BY_PREFIX) + 1 + BODY_LENGTH


@dataclass(frozen=True, slots=True)
class ParsedID:
    """The parts of a valid ID.

    ``timestamp`` is the creation time (UTC, millisecond precision), ``randomness`` the low
    80 bits, ``raw`` the ID string itself.
    """

    kind: IDKind
    timestamp: datetime
    randomness: int
    raw: str

    @property
    def timestamp_ms(self) -> int:
        """Milliseconds since the Unix epoch, as stored in the ID."""
        return (self.timestamp - _EPOCH) // timedelta(milliseconds=1)


def _encode(value: int) -> str:
    chars = []
    for shift in range(5 * (BODY_LENGTH - 1), -1, -5):
        chars.append(CROCKFORD_ALPHABET[(value >> shift) & 31])
    return "".join(chars)


def compose_id(kind: IDKind, timestamp_ms: int, randomness: int) -> str:
    """The ID of ``kind`` with the given parts (the inverse of :meth:`UnifiedIDManager.parse`).

    For tests and tools that need a specific, reproducible ID; services use ``generate``.
    """
    if not 0 <= timestamp_ms <= MAX_TIMESTAMP_MS:
        raise InvalidIDError(f"timestamp {timestamp_ms} ms is outside the ID time range")
    if not 0 <= randomness <= _RANDOM_MASK:
        raise InvalidIDError("randomness must fit in 80 bits")
    return f"{IDKind(kind).value}_{_encode((timestamp_ms << _RANDOM_BITS) | randomness)}"


def _parse(value: object, kind: IDKind | None) -> ParsedID:
    """Parse ``value`` as an ID (of ``kind``, if given); raise InvalidIDError saying why not."""
    if not isinstance(value, str):
        raise InvalidIDError(f"an ID must be a str, got {describe_value(value)}")
    value = str.__str__(value)  # a str subclass is reduced to its plain text
    shown = describe_value(value)
    if len(value) > _MAX_ID_LENGTH:
        raise InvalidIDError(f"{shown} is too long to be an ID")
    prefix, separator, body = value.partition("_")
    found_kind = _KIND_BY_PREFIX.get(prefix)
    if not separator or found_kind is None:
        raise InvalidIDError(f"{shown} does not start with a known ID prefix and '_'")
    if kind is not None:
        try:
            expected = IDKind(kind)
        except ValueError:
            raise InvalidIDError(f"unknown ID kind {describe_value(kind)}") from None
        if found_kind is not expected:
            raise InvalidIDError(
                f"{shown} is a {found_kind.name} ID, expected a {expected.name} ID"
            )
    if len(body) != BODY_LENGTH:
        raise InvalidIDError(f"{shown} must have {BODY_LENGTH} characters after the prefix")
    number = 0
    for char in body:
        digit = _DECODE.get(char)
        if digit is None:
            raise InvalidIDError(f"{shown} has a character outside lowercase Crockford base32")
        number = (number << 5) | digit
    if body[0] > _MAX_FIRST_CHAR:
        raise InvalidIDError(f"{shown} encodes more than 128 bits")
    timestamp_ms = number >> _RANDOM_BITS
    if timestamp_ms > MAX_TIMESTAMP_MS:
        raise InvalidIDError(f"{shown} has a timestamp beyond year 9999")
    return ParsedID(
        kind=found_kind,
        timestamp=_EPOCH + timedelta(milliseconds=timestamp_ms),
        randomness=number & _RANDOM_MASK,
        raw=value,
    )


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# Managers alive in this process, so a forked child can drop every one's last value.
_LIVE_MANAGERS: weakref.WeakSet[UnifiedIDManager] = weakref.WeakSet()


class UnifiedIDManager:
    """Generates, parses and validates IDs. Thread-safe; one instance per process suffices.

    ``clock`` (milliseconds since the epoch) and ``random_bits`` (``secrets.randbits``-like)
    can be replaced, which tests use to pin time and randomness.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], int] = _wall_clock_ms,
        random_bits: Callable[[int], int] = secrets.randbits,
    ) -> None:
        self._clock = clock
        self._random_bits = random_bits
        self._lock = threading.Lock()
        self._last = -1
        _LIVE_MANAGERS.add(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._last = -1

    def generate(self, kind: IDKind) -> str:
        """Return a new ID of ``kind``, greater than every ID this manager returned before."""
        try:
            prefix = IDKind(kind).value
        except ValueError:
            raise InvalidIDError(f"unknown ID kind {describe_value(kind)}") from None
        with self._lock:
            now_ms = self._clock()
            if not 0 <= now_ms <= MAX_TIMESTAMP_MS:
                raise InvalidIDError(f"clock value {now_ms} ms is outside the ID time range")
            if now_ms > self._last >> _RANDOM_BITS:
                value = (now_ms << _RANDOM_BITS) | self._random_bits(_RANDOM_BITS)
            else:
                value = self._last + 1 + self._random_bits(_MAX_STEP_BITS)
            if value > _MAX_VALUE or value >> _RANDOM_BITS > MAX_TIMESTAMP_MS:
                raise InvalidIDError("ID space exhausted for the current millisecond")
            self._last = value
        return f"{prefix}_{_encode(value)}"

    def parse(self, value: object) -> ParsedID:
        """Split a valid ID into its parts; raise :class:`InvalidIDError` otherwise."""
        return _parse(value, None)

    def is_valid(self, value: object, kind: IDKind | None = None) -> bool:
        """Whether ``value`` is a valid ID (of ``kind``, if given). Never raises."""
        try:
            _parse(value, kind)
        except Exception:
            return False
        return True

    def validate(self, value: object, kind: IDKind | None = None) -> str:
        """Return ``value`` (as a plain str) if it is a valid ID (of ``kind``).

        Raises :class:`InvalidIDError` otherwise.
        """
        return _parse(value, kind).raw


def _reset_managers_after_fork() -> None:
    for manager in list(_LIVE_MANAGERS):
        manager._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_managers_after_fork)

_default_manager = UnifiedIDManager()


def get_id_manager() -> UnifiedIDManager:
    """The process-wide default manager used by the helpers below."""
    return _default_manager


def new_id(kind: IDKind) -> str:
    """A new ID of ``kind`` from the default manager."""
    return _default_manager.generate(kind)


def new_user_id() -> str:
    return _default_manager.generate(IDKind.USER)


def new_thread_id() -> str:
    return _default_manager.generate(IDKind.THREAD)


def new_run_id() -> str:
    return _default_manager.generate(IDKind.RUN)


def new_request_id() -> str:
    return _default_manager.generate(IDKind.REQUEST)


def parse_id(value: object) -> ParsedID:
    """Parse with the default manager (see :meth:`UnifiedIDManager.parse`)."""
    return _default_manager.parse(value)


def is_valid_id(value: object, kind: IDKind | None = None) -> bool:
    """See :meth:`UnifiedIDManager.is_valid`."""
    return _default_manager.is_valid(value, kind)


def validate_id(value: object, kind: IDKind | None = None) -> str:
    """See :meth:`UnifiedIDManager.validate`."""
    return _default_manager.validate(value, kind)
