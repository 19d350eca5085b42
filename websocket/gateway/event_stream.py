"""Per-connection ordering of run events: live delivery and replay merged, in seq order.

A connection gets each of its user's runs from two sources: live events (from the
router) and replayed ones (``resume``, from the replay buffer). Both carry the run's
gapless ``seq``, so this module can promise, per connection and run:

* no duplicates: an event whose ``seq`` was already sent (live or replayed) is dropped;
* no gaps once a run is followed: a live event that skips ahead (events were dropped on
  the way, for example by a full queue) is preceded by the missing ones, read back from
  the replay buffer;
* ``resume(run, after_seq=N)`` sends every retained event with ``seq > N`` that this
  connection has not sent yet, in order, and the run then continues live from there;
* nothing of a run reaches the client before the message that introduces it: the
  connection's first message (``authentication_success``) and a run's ``run_accepted``
  go out before any of their events (:meth:`EventStream.open`, :meth:`EventStream.hold`).

All sends of one connection go through one lock, so replay and live delivery never
interleave. The replay buffer is read with the connection's own user ID: another user's
run is simply not found.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from websocket.emitter.api import EmitterError, EventEnvelope, ReplayBuffer, ReplayNotFoundError
from websocket.gateway.api import (
    InvalidMessageError,
    ReplayIncompleteError,
    RunNotFoundError,
    ServiceUnavailableError,
)

__all__ = ["EventStream"]

log = structlog.get_logger(__name__)

#: Runs whose cursor one connection remembers; the least recently used is forgotten.
DEFAULT_MAX_TRACKED_RUNS = 1024


@dataclass
class _RunCursor:
    """What one connection has sent of one run.

    The client holds every event with ``low <= seq <= high``; after a ``resume``,
    ``low`` is 1 (the client said it had everything up to ``after_seq``).
    """

    low: int = 0
    high: int = 0
    holding: bool = False
    held: list[EventEnvelope] = field(default_factory=list)

    @property
    def started(self) -> bool:
        return self.high > 0

    def has(self, seq: int) -> bool:
        return self.started and self.low <= seq <= self.high


class EventStream:
    """The ordered event output of one connection. See the module docstring.

    ``send`` writes one text frame; ``on_event_sent`` is called for every event frame
    written (metrics).
    """

    def __init__(
        self,
        *,
        user_id: str,
        replay: ReplayBuffer,
        send: Callable[[str], Awaitable[None]],
        on_event_sent: Callable[[], None] | None = None,
        max_tracked_runs: int = DEFAULT_MAX_TRACKED_RUNS,
    ) -> None:
        self._user_id = user_id
        self._replay = replay
        self._send = send
        self._on_event_sent = on_event_sent
        self._max_runs = max_tracked_runs
        self._lock = asyncio.Lock()
        self._cursors: OrderedDict[str, _RunCursor] = OrderedDict()
        self._opened = False
        self._before_open: list[EventEnvelope] = []

    # -- non-event messages ----------------------------------------------------------------

    async def open(self, first_text: str) -> None:
        """Send the connection's first message, then the events that arrived before it."""
        async with self._lock:
            await self._send(first_text)
            self._opened = True
            pending, self._before_open = self._before_open, []
            for envelope in pending:
                await self._live_locked(envelope)

    async def write(self, text: str) -> None:
        """Send a non-event message (reply, error) in order with the events."""
        async with self._lock:
            await self._send(text)

    # -- live events -----------------------------------------------------------------------

    async def live(self, envelope: EventEnvelope) -> None:
        """Deliver one live event of this connection's user."""
        if not self._opened:
            self._before_open.append(envelope)
            return
        async with self._lock:
            await self._live_locked(envelope)

    async def _live_locked(self, envelope: EventEnvelope) -> None:
        cursor = self._cursor(envelope.run_id)
        if cursor.holding:
            cursor.held.append(envelope)
            return
        seq = envelope.seq
        if not cursor.started:
            await self._emit(envelope)
            cursor.low = cursor.high = seq
            return
        if seq <= cursor.high:
            return  # already sent (replayed, or delivered twice)
        if seq > cursor.high + 1:
            await self._fill_gap(envelope.run_id, cursor, before=seq)
            if seq <= cursor.high:
                return
        await self._emit(envelope)
        cursor.high = seq

    async def _fill_gap(self, run_id: str, cursor: _RunCursor, *, before: int) -> None:
        try:
            missing = await self._replay.read_after(
                self._user_id, run_id, cursor.high, limit=before - cursor.high - 1
            )
        except Exception as exc:
            # The live event still goes out; the client can resume to fill the gap.
            log.warning("gateway_gap_fill_failed", run_id=run_id, error=type(exc).__name__)
            return
        for envelope in missing:
            if cursor.high < envelope.seq < before:
                await self._emit(envelope)
                cursor.high = envelope.seq
        log.info("gateway_gap_filled", run_id=run_id, events=len(missing))

    # -- runs started on this connection ---------------------------------------------------

    def hold(self, run_id: str) -> None:
        """Keep the run's live events back until :meth:`release` (run being accepted)."""
        self._cursor(run_id).holding = True

    async def release(self, run_id: str, first_text: str | None = None) -> None:
        """Send ``first_text`` (``run_accepted``) if given, then the held events."""
        async with self._lock:
            if first_text is not None:
                await self._send(first_text)
            cursor = self._cursor(run_id)
            cursor.holding = False
            held, cursor.held = sorted(cursor.held, key=lambda e: e.seq), []
            for envelope in held:
                await self._live_locked(envelope)

    # -- resume ----------------------------------------------------------------------------

    async def resume(self, run_id: str, after_seq: int) -> int:
        """Replay the run's events with ``seq > after_seq`` not sent yet; return how many.

        Raises :class:`RunNotFoundError` when this user has no such run (also when it is
        another user's), :class:`ReplayIncompleteError` after replaying when the oldest
        requested events are no longer retained, :class:`ServiceUnavailableError` when
        the replay buffer cannot be read.
        """
        async with self._lock:
            try:
                events = await self._replay.read_after(self._user_id, run_id, after_seq)
            except ReplayNotFoundError:
                raise RunNotFoundError from None
            except EmitterError as exc:
                if exc.grpc_status_name == "INVALID_ARGUMENT":
                    raise InvalidMessageError("The resume request is invalid.") from None
                log.warning("gateway_replay_failed", run_id=run_id, error_code=exc.error_code)
                raise ServiceUnavailableError from None
            except Exception as exc:
                log.error("gateway_replay_failed", run_id=run_id, error=type(exc).__name__)
                raise ServiceUnavailableError from None
            cursor = self._cursor(run_id)
            sent = 0
            for envelope in events:
                if cursor.has(envelope.seq) or envelope.run_id != run_id:
                    continue
                await self._emit(envelope)
                sent += 1
            last = events[-1].seq if events else 0
            cursor.low, cursor.high = 1, max(cursor.high, after_seq, last)
            if events and events[0].seq > after_seq + 1:
                raise ReplayIncompleteError(
                    f"Events {after_seq + 1} to {events[0].seq - 1} are no longer available; "
                    f"replayed from {events[0].seq}."
                )
            return sent

    # -- internals -------------------------------------------------------------------------

    def _cursor(self, run_id: str) -> _RunCursor:
        cursor = self._cursors.get(run_id)
        if cursor is None:
            cursor = self._cursors[run_id] = _RunCursor()
            if len(self._cursors) > self._max_runs:
                # Forget the least recently used run that is not being accepted right now.
                for candidate, old in self._cursors.items():
                    if not old.holding and candidate != run_id:
                        del self._cursors[candidate]
                        break
        else:
            self._cursors.move_to_end(run_id)
        return cursor

    async def _emit(self, envelope: EventEnvelope) -> None:
        await self._send(envelope.to_json())
        if self._on_event_sent is not None:
            self._on_event_sent()
