"""Replay buffers: number each run's events gaplessly and keep them for ``resume``.

Both backends satisfy :class:`websocket.emitter.api.ReplayBuffer`:

* :class:`MemoryReplayBuffer` (the embedded default) keeps runs in this process.
* :class:`RedisReplayBuffer` keeps them in Redis Streams, so every gateway process can
  serve a ``resume`` and a run continued in another process continues its numbering.

Ownership is structural: a run is stored under ``(user_id, run_id)`` and read back only
under the same pair, so asking for another user's run finds nothing
(:class:`ReplayNotFoundError`, the same answer as for a run that never existed). The Redis
backend additionally stores the owner in each entry and checks it on every read.

The sequence counter lives in the store, beside the events: numbering and storing an
event is one atomic step (one synchronous section in memory, one Lua script in Redis), so
concurrent emitters, also in different processes, get 1, 2, 3... without gaps or
duplicates, and a failed store uses no number. A run's events and counter expire
``ttl_seconds`` after its last event; a run written to after that starts again at 1.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Self

import redis.asyncio as aioredis
import structlog
from pydantic import ValidationError
from redis.exceptions import RedisError

from context.errors import InvalidContextError
from context.execution_context import check_context_id
from websocket.emitter.api import (
    EventDraft,
    EventEnvelope,
    InvalidEventError,
    InvalidReplayRequestError,
    ReplayNotFoundError,
    ReplayUnavailableError,
)

__all__ = [
    "DEFAULT_MAX_EVENTS_PER_RUN",
    "DEFAULT_MAX_RUNS",
    "DEFAULT_TTL_SECONDS",
    "MemoryReplayBuffer",
    "RedisReplayBuffer",
]

log = structlog.get_logger(__name__)

DEFAULT_MAX_EVENTS_PER_RUN = 1000
DEFAULT_TTL_SECONDS = 3600.0
DEFAULT_MAX_RUNS = 10_000


def _valid_ids(user_id: str, run_id: str) -> str | None:
    """None if both are acceptable IDs, else which one is not.

    The caller's reason never quotes the value: a replay request's run ID comes from a
    client, and error messages go back to clients.
    """
    for name, value in (("user_id", user_id), ("run_id", run_id)):
        try:
            check_context_id(value, name)
        except InvalidContextError:
            return name
    return None


def _check_append(user_id: str, run_id: str, draft: EventDraft) -> None:
    bad = _valid_ids(user_id, run_id)
    if bad is not None:
        raise InvalidEventError(f"{bad} is not a valid ID")
    if draft.run_id != run_id:
        raise InvalidEventError("the event's run_id differs from the run it is appended to")


def _check_read(user_id: str, run_id: str, after_seq: object, limit: object) -> None:
    bad = _valid_ids(user_id, run_id)
    if bad is not None:
        raise InvalidReplayRequestError(f"{bad} is not a valid ID")
    if isinstance(after_seq, bool) or not isinstance(after_seq, int) or after_seq < 0:
        raise InvalidReplayRequestError("after_seq must be an integer >= 0")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidReplayRequestError("limit must be a positive integer")


def _check_bounds(max_events_per_run: int, ttl_seconds: float) -> None:
    if max_events_per_run < 1:
        raise ValueError("max_events_per_run must be at least 1")
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")


# -- memory --------------------------------------------------------------------------------


@dataclass
class _RunLog:
    maxlen: int
    last_seq: int = 0
    expires_at: float = 0.0
    # (seq, envelope JSON): stored as text so nothing a reader gets can alter the log.
    events: deque[tuple[int, str]] = field(init=False)

    def __post_init__(self) -> None:
        self.events = deque(maxlen=self.maxlen)


class MemoryReplayBuffer:
    """Per-process replay buffer: per run at most ``max_events_per_run`` events (oldest
    dropped first), kept ``ttl_seconds`` after the run's last event, and at most
    ``max_runs`` runs (the least recently written run is dropped first).

    Safe for any number of tasks of one event loop (numbering and storing happen without
    an ``await`` in between); not meant to be shared between threads.
    """

    def __init__(
        self,
        *,
        max_events_per_run: int = DEFAULT_MAX_EVENTS_PER_RUN,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        max_runs: int = DEFAULT_MAX_RUNS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_bounds(max_events_per_run, ttl_seconds)
        if max_runs < 1:
            raise ValueError("max_runs must be at least 1")
        self._max_events = max_events_per_run
        self._ttl = ttl_seconds
        self._max_runs = max_runs
        self._clock = clock
        # Ordered by last write, so expired and least recently written runs are in front.
        self._runs: OrderedDict[tuple[str, str], _RunLog] = OrderedDict()

    def __len__(self) -> int:
        """How many runs are held (expired ones included until the next write)."""
        return len(self._runs)

    async def append(self, user_id: str, run_id: str, draft: EventDraft) -> EventEnvelope:
        _check_append(user_id, run_id, draft)
        now = self._clock()
        self._drop_expired(now)
        key = (user_id, run_id)
        run = self._runs.get(key)
        if run is None:
            run = _RunLog(maxlen=self._max_events)
        envelope = draft.sequenced(run.last_seq + 1)
        # From here on nothing can fail: the number is used exactly when the event is kept.
        run.last_seq = envelope.seq
        run.events.append((envelope.seq, envelope.to_json()))
        run.expires_at = now + self._ttl
        self._runs[key] = run
        self._runs.move_to_end(key)
        while len(self._runs) > self._max_runs:
            self._runs.popitem(last=False)
        return envelope

    async def read_after(
        self, user_id: str, run_id: str, after_seq: int, *, limit: int | None = None
    ) -> list[EventEnvelope]:
        _check_read(user_id, run_id, after_seq, limit)
        run = self._live_run(user_id, run_id)
        if run is None:
            raise ReplayNotFoundError("no replayable run with that ID")
        found: list[EventEnvelope] = []
        for seq, text in run.events:
            if seq <= after_seq:
                continue
            found.append(EventEnvelope.model_validate_json(text))
            if limit is not None and len(found) >= limit:
                break
        return found

    async def last_seq(self, user_id: str, run_id: str) -> int:
        _check_read(user_id, run_id, 0, None)
        run = self._live_run(user_id, run_id)
        return 0 if run is None else run.last_seq

    async def close(self) -> None:
        self._runs.clear()

    def _live_run(self, user_id: str, run_id: str) -> _RunLog | None:
        run = self._runs.get((user_id, run_id))
        if run is None or run.expires_at <= self._clock():
            return None
        return run

    def _drop_expired(self, now: float) -> None:
        while self._runs:
            key, run = next(iter(self._runs.items()))
            if run.expires_at > now:
                return
            del self._runs[key]


# -- Redis ---------------------------------------------------------------------------------

# KEYS[1] = the run's counter, KEYS[2] = the run's stream.
# ARGV = owner user_id, draft JSON, max stream length, TTL in milliseconds.
# The stream entry ID is "<seq>-0", so XRANGE by seq needs no index. If the counter was
# lost while the stream survived, numbering resumes after the stream's last entry.
_APPEND_SCRIPT = """
local seq = redis.call('INCR', KEYS[1])
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if last[1] then
  local last_seq = tonumber(string.match(last[1][1], '^(%d+)-'))
  if last_seq and last_seq >= seq then
    seq = last_seq + 1
    redis.call('SET', KEYS[1], seq)
  end
end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], tostring(seq) .. '-0', 'u', ARGV[1], 'e', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return seq
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@asynccontextmanager
async def _redis_errors(action: str) -> AsyncIterator[None]:
    try:
        yield
    except (RedisError, OSError) as error:
        log.warning("replay.redis_error", action=action, error_type=type(error).__name__)
        raise ReplayUnavailableError(f"the replay store failed while {action}") from error


class RedisReplayBuffer:
    """Replay buffer in Redis Streams, shared by every process using the same Redis.

    Keys (``{user_id}`` is a Redis Cluster hash tag, so a user's keys share a slot)::

        <prefix>:{<user_id>}:<run_id>:seq      INCR counter of the run
        <prefix>:{<user_id>}:<run_id>:events   stream, entry "<seq>-0" {u: owner, e: draft}

    IDs are checked to be context IDs (``[A-Za-z0-9_.:-]``, no braces), so one
    ``(user_id, run_id)`` pair maps to exactly one key pair. Streams are capped at
    ``max_events_per_run`` entries (exact ``MAXLEN``) and both keys expire ``ttl_seconds``
    after the run's last event.

    A client passed in should use a ``BlockingConnectionPool`` (as :meth:`from_url` does):
    redis-py's default pool raises once its connections are all busy, which would fail
    events whenever many runs emit at once.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        max_events_per_run: int = DEFAULT_MAX_EVENTS_PER_RUN,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        key_prefix: str = "ssot:ws:replay",
        owns_client: bool = False,
    ) -> None:
        _check_bounds(max_events_per_run, ttl_seconds)
        self._client = client
        self._max_events = max_events_per_run
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._prefix = key_prefix
        self._owns_client = owns_client
        self._append = client.register_script(_APPEND_SCRIPT)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = 5.0,
        max_connections: int = 64,
        max_events_per_run: int = DEFAULT_MAX_EVENTS_PER_RUN,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        key_prefix: str = "ssot:ws:replay",
    ) -> Self:
        """A buffer with its own client for ``url``, closed by :meth:`close`.

        The client's pool holds at most ``max_connections`` connections; when all are busy
        a caller waits up to ``timeout`` seconds for one (instead of failing at once, as
        redis-py's default pool does past its limit), so many concurrent runs share the
        pool rather than erroring.
        """
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        client = aioredis.Redis.from_pool(pool)
        return cls(
            client,
            max_events_per_run=max_events_per_run,
            ttl_seconds=ttl_seconds,
            key_prefix=key_prefix,
            owns_client=True,
        )

    def keys_of(self, user_id: str, run_id: str) -> tuple[str, str]:
        """The (counter, stream) keys of a user's run."""
        base = f"{self._prefix}:{{{user_id}}}:{run_id}"
        return f"{base}:seq", f"{base}:events"

    async def append(self, user_id: str, run_id: str, draft: EventDraft) -> EventEnvelope:
        _check_append(user_id, run_id, draft)
        seq_key, stream_key = self.keys_of(user_id, run_id)
        body = draft.model_dump_json()
        async with _redis_errors("storing an event"):
            seq = int(
                await self._append(
                    keys=[seq_key, stream_key],
                    args=[user_id, body, self._max_events, self._ttl_ms],
                )
            )
        return draft.sequenced(seq)

    async def read_after(
        self, user_id: str, run_id: str, after_seq: int, *, limit: int | None = None
    ) -> list[EventEnvelope]:
        _check_read(user_id, run_id, after_seq, limit)
        seq_key, stream_key = self.keys_of(user_id, run_id)
        async with (
            _redis_errors("reading events"),
            self._client.pipeline(transaction=False) as pipe,
        ):
            pipe.xrange(stream_key, min=f"{after_seq + 1}-0", max="+", count=limit)
            pipe.exists(seq_key, stream_key)
            entries, existing = await pipe.execute()
        if not entries and not existing:
            raise ReplayNotFoundError("no replayable run with that ID")
        found: list[EventEnvelope] = []
        for entry_id, fields in entries:
            envelope = self._decode(user_id, run_id, entry_id, fields)
            if envelope is not None:
                found.append(envelope)
        return found

    async def last_seq(self, user_id: str, run_id: str) -> int:
        _check_read(user_id, run_id, 0, None)
        seq_key, _ = self.keys_of(user_id, run_id)
        async with _redis_errors("reading a run's last seq"):
            value = await self._client.get(seq_key)
        return 0 if value is None else int(value)

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    @staticmethod
    def _decode(
        user_id: str, run_id: str, entry_id: bytes | str, fields: dict[bytes | str, bytes | str]
    ) -> EventEnvelope | None:
        values = {_text(key): _text(value) for key, value in fields.items()}
        seq = int(_text(entry_id).partition("-")[0])
        if values.get("u") != user_id:
            # Keys are namespaced by user, so this means the store was written by something
            # else; never hand such an entry to the requesting user.
            log.error("replay.owner_mismatch", security_event=True, run_id=run_id, seq=seq)
            return None
        try:
            return EventDraft.model_validate_json(values.get("e", "")).sequenced(seq)
        except ValidationError as error:
            log.error("replay.corrupt_entry", run_id=run_id, seq=seq, errors=error.error_count())
            return None
