"""The wrong-user counter and the per-run checks of the users benchmark."""

from __future__ import annotations

from typing import Any

from tools.bench.leaks import DeliveryLedger


def event(run_id: str, seq: int, kind: str = "agent_thinking") -> dict[str, Any]:
    return {"type": kind, "run_id": run_id, "seq": seq, "payload": {}}


def complete_run(ledger: DeliveryLedger, user: str, run_id: str, events: int = 3) -> None:
    ledger.started(user, run_id)
    for seq in range(1, events):
        ledger.received(user, event(run_id, seq))
    ledger.received(user, event(run_id, events, "agent_completed"))


def test_own_events_are_no_leak() -> None:
    ledger = DeliveryLedger()
    complete_run(ledger, "alice", "run-a")
    complete_run(ledger, "bob", "run-b")
    report = ledger.report()
    assert report.wrong_user_events == 0
    assert report.foreign_run_events == 0
    assert report.runs_started == report.runs_completed == 2
    assert report.runs_incomplete == report.runs_failed == 0
    assert report.events_received == 6


def test_another_users_event_is_counted_as_wrong_and_foreign() -> None:
    ledger = DeliveryLedger()
    complete_run(ledger, "alice", "run-a")
    complete_run(ledger, "bob", "run-b")
    ledger.received("bob", event("run-a", 2))
    ledger.received("bob", event("run-a", 3, "agent_completed"))
    report = ledger.report()
    assert report.wrong_user_events == 2
    assert report.foreign_run_events == 2
    # Alice's own view of her run is still whole.
    assert report.runs_completed == 2


def test_an_event_of_a_run_nobody_started_is_wrong_but_not_foreign() -> None:
    ledger = DeliveryLedger()
    complete_run(ledger, "alice", "run-a")
    ledger.received("alice", event("run-x", 1))
    report = ledger.report()
    assert report.wrong_user_events == 1
    assert report.foreign_run_events == 0


def test_an_event_before_its_run_accepted_is_judged_at_the_end() -> None:
    ledger = DeliveryLedger()
    ledger.received("alice", event("run-a", 1, "agent_started"))
    ledger.started("alice", "run-a")
    ledger.received("alice", event("run-a", 2, "agent_completed"))
    report = ledger.report()
    assert report.wrong_user_events == 0
    assert report.runs_completed == 1


def test_a_gap_or_reordering_in_seq_is_reported() -> None:
    ledger = DeliveryLedger()
    ledger.started("alice", "gap")
    for seq, kind in ((1, "agent_started"), (3, "agent_completed")):
        ledger.received("alice", event("gap", seq, kind))
    ledger.started("alice", "swapped")
    for seq, kind in ((2, "agent_thinking"), (1, "agent_started"), (3, "agent_completed")):
        ledger.received("alice", event("swapped", seq, kind))
    complete_run(ledger, "alice", "fine")
    assert ledger.report().runs_with_sequence_gaps == 2


def test_failed_unfinished_and_doubly_ended_runs() -> None:
    ledger = DeliveryLedger()
    ledger.started("alice", "failed")
    ledger.received("alice", event("failed", 1, "agent_started"))
    ledger.received("alice", event("failed", 2, "agent_error"))
    ledger.started("alice", "unfinished")
    ledger.received("alice", event("unfinished", 1, "agent_started"))
    ledger.started("alice", "twice")
    ledger.received("alice", event("twice", 1, "agent_completed"))
    ledger.received("alice", event("twice", 2, "agent_completed"))
    ledger.started("alice", "silent")
    report = ledger.report()
    assert report.runs_started == 4
    assert report.runs_failed == 1
    assert report.runs_completed == 0
    assert report.runs_incomplete == 3


def test_a_run_id_accepted_for_two_users_is_reported() -> None:
    ledger = DeliveryLedger()
    ledger.started("alice", "run-a")
    ledger.started("bob", "run-a")
    ledger.received("bob", event("run-a", 1))
    report = ledger.report()
    assert report.duplicate_run_ids == 1
    # The first owner keeps the run: bob's event is a wrong delivery.
    assert report.wrong_user_events == 1
