"""The isolation check of the users benchmark: did any event reach a wrong user?

Every connection records the runs its user started (``run_accepted``) and every run
event it received. An event is *delivered to a wrong user* when its ``run_id`` is not a
run that the receiving connection's user started - whether it belongs to another user of
the benchmark or to no run anyone started. The verdict is computed at the end, so an
event that overtakes its own ``run_accepted`` is judged correctly.

The ledger also checks what a user must see of their own runs: ``seq`` gapless from 1
and exactly one terminal event (``agent_completed`` or ``agent_error``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["TERMINAL_EVENTS", "DeliveryLedger", "DeliveryReport"]

TERMINAL_EVENTS = frozenset({"agent_completed", "agent_error"})


class DeliveryReport(BaseModel):
    """What the users received, judged against what they started."""

    model_config = ConfigDict(frozen=True)

    runs_started: int
    runs_completed: int
    runs_failed: int
    #: Runs their user did not see end exactly once (no terminal event, or two).
    runs_incomplete: int
    events_received: int
    #: Events whose run was not started by the receiving user (must be 0).
    wrong_user_events: int
    #: Of those, events of a run another benchmark user started.
    foreign_run_events: int
    #: Runs whose events, as their own user received them, are not seq 1..n in order.
    runs_with_sequence_gaps: int
    #: A run_id accepted for two different users (must be 0).
    duplicate_run_ids: int


@dataclass(slots=True)
class _Received:
    seqs: list[int] = field(default_factory=list)
    types: list[str] = field(default_factory=list)


class DeliveryLedger:
    """Runs started and events received, per user."""

    def __init__(self) -> None:
        self._owner: dict[str, str] = {}
        self._duplicates = 0
        self._received: dict[str, dict[str, _Received]] = defaultdict(dict)
        self._events = 0

    def started(self, user_id: str, run_id: str) -> None:
        """``user_id``'s connection was told ``run_accepted`` for ``run_id``."""
        owner = self._owner.setdefault(run_id, user_id)
        if owner != user_id:
            self._duplicates += 1

    def received(self, user_id: str, event: Mapping[str, Any]) -> None:
        """``user_id``'s connection received a run event (any frame with a ``run_id``)."""
        run_id = str(event.get("run_id"))
        seen = self._received[user_id].setdefault(run_id, _Received())
        seq = event.get("seq")
        seen.seqs.append(seq if isinstance(seq, int) else -1)
        seen.types.append(str(event.get("type")))
        self._events += 1

    def report(self) -> DeliveryReport:
        wrong = foreign = gaps = completed = failed = 0
        own_runs: dict[str, _Received] = {}
        for user_id, runs in self._received.items():
            for run_id, seen in runs.items():
                owner = self._owner.get(run_id)
                if owner == user_id:
                    own_runs[run_id] = seen
                    continue
                wrong += len(seen.seqs)
                if owner is not None:
                    foreign += len(seen.seqs)
        for seen in own_runs.values():
            if seen.seqs != list(range(1, len(seen.seqs) + 1)):
                gaps += 1
            terminal = [kind for kind in seen.types if kind in TERMINAL_EVENTS]
            if terminal == ["agent_completed"]:
                completed += 1
            elif terminal == ["agent_error"]:
                failed += 1
        started = len(self._owner)
        return DeliveryReport(
            runs_started=started,
            runs_completed=completed,
            runs_failed=failed,
            runs_incomplete=started - completed - failed,
            events_received=self._events,
            wrong_user_events=wrong,
            foreign_run_events=foreign,
            runs_with_sequence_gaps=gaps,
            duplicate_run_ids=self._duplicates,
        )
