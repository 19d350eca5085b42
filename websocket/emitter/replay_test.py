"""Replay buffers: numbering, read_after, ownership, bounds.

Tests taking ``replay``/``replay_store`` run against the backend selected by
``SSOT_TEST_CACHE_BACKEND`` (conftest.py); memory-only behaviour is tested here too,
Redis-only behaviour in replay_redis_test.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import pytest

from context import UserExecutionContext, new_request_id, new_run_id, new_thread_id, new_user_id
from websocket.emitter.api import (
    InvalidEventError,
    InvalidReplayRequestError,
    ReplayBuffer,
    ReplayNotFoundError,
)
from websocket.emitter.replay import MemoryReplayBuffer, RedisReplayBuffer
from websocket.emitter.testing import ReplayStore, draft_for, fill

# -- numbering and reading -----------------------------------------------------------------


async def test_append_numbers_from_one_and_returns_the_stored_envelope(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    draft = draft_for(alice)
    first = await replay.append(alice.user_id, alice.run_id, draft)
    second = await replay.append(alice.user_id, alice.run_id, draft)
    assert (first.seq, second.seq) == (1, 2)
    assert first.draft() == draft
    assert await replay.read_after(alice.user_id, alice.run_id, 0) == [first, second]
    assert await replay.last_seq(alice.user_id, alice.run_id) == 2


async def test_read_after_returns_exactly_the_events_after_a_seq(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    await fill(replay, alice, 10)

    async def seqs(after: int, limit: int | None = None) -> list[int]:
        found = await replay.read_after(alice.user_id, alice.run_id, after, limit=limit)
        return [envelope.seq for envelope in found]

    assert await seqs(0) == list(range(1, 11))
    assert await seqs(4) == list(range(5, 11))
    assert await seqs(9) == [10]
    assert await seqs(10) == []
    assert await seqs(1000) == []
    assert await seqs(2, limit=3) == [3, 4, 5]
    [fifth] = await replay.read_after(alice.user_id, alice.run_id, 4, limit=1)
    assert fifth.payload["thought"] == "event 5"


async def test_concurrent_appends_through_two_buffers_are_gapless(
    alice: UserExecutionContext, replay_store: ReplayStore
) -> None:
    first, second = replay_store.open(), replay_store.open()
    envelopes = await asyncio.gather(
        *(
            (first if i % 2 else second).append(alice.user_id, alice.run_id, draft_for(alice))
            for i in range(100)
        )
    )
    assert sorted(envelope.seq for envelope in envelopes) == list(range(1, 101))
    stored = await first.read_after(alice.user_id, alice.run_id, 0)
    assert [envelope.seq for envelope in stored] == list(range(1, 101))


async def test_hundreds_of_concurrent_runs_share_one_buffer(replay: ReplayBuffer) -> None:
    contexts = [UserExecutionContext.from_request(new_user_id()) for _ in range(150)]
    await asyncio.gather(*(fill(replay, ctx, 1) for ctx in contexts for _ in range(2)))
    for ctx in contexts:
        stored = await replay.read_after(ctx.user_id, ctx.run_id, 0)
        assert [envelope.seq for envelope in stored] == [1, 2]


async def test_the_number_of_events_per_run_is_bounded(
    alice: UserExecutionContext, replay_backend: str, request: pytest.FixtureRequest
) -> None:
    bounded: ReplayBuffer
    if replay_backend == "redis":
        bounded = RedisReplayBuffer.from_url(
            request.getfixturevalue("redis_url"), max_events_per_run=5
        )
    else:
        bounded = MemoryReplayBuffer(max_events_per_run=5)
    try:
        await fill(bounded, alice, 8)
        kept = await bounded.read_after(alice.user_id, alice.run_id, 0)
        assert [envelope.seq for envelope in kept] == [4, 5, 6, 7, 8]
        assert await bounded.last_seq(alice.user_id, alice.run_id) == 8
        assert (await bounded.append(alice.user_id, alice.run_id, draft_for(alice))).seq == 9
    finally:
        await bounded.close()


async def test_append_refuses_a_draft_of_another_run(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    with pytest.raises(InvalidEventError):
        await replay.append(alice.user_id, new_run_id(), draft_for(alice))
    assert await replay.last_seq(alice.user_id, alice.run_id) == 0


@pytest.mark.parametrize("user_id", ["", "*", "usr_{x}", "a b", "null", "u" * 200])
async def test_append_refuses_malformed_user_ids(
    alice: UserExecutionContext, replay: ReplayBuffer, user_id: str
) -> None:
    with pytest.raises(InvalidEventError):
        await replay.append(user_id, alice.run_id, draft_for(alice))


@pytest.mark.parametrize("after_seq", [-1, True, "3", 1.5, None])
async def test_read_after_refuses_a_malformed_seq(
    alice: UserExecutionContext, replay: ReplayBuffer, after_seq: object
) -> None:
    await fill(replay, alice, 1)
    with pytest.raises(InvalidReplayRequestError):
        await replay.read_after(alice.user_id, alice.run_id, cast(Any, after_seq))


@pytest.mark.parametrize("limit", [0, -1, True])
async def test_read_after_refuses_a_malformed_limit(
    alice: UserExecutionContext, replay: ReplayBuffer, limit: int
) -> None:
    await fill(replay, alice, 1)
    with pytest.raises(InvalidReplayRequestError):
        await replay.read_after(alice.user_id, alice.run_id, 0, limit=limit)


async def test_an_unknown_run_is_not_found(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    with pytest.raises(ReplayNotFoundError):
        await replay.read_after(alice.user_id, new_run_id(), 0)
    assert await replay.last_seq(alice.user_id, new_run_id()) == 0


# -- ownership -----------------------------------------------------------------------------


def hostile_run_ids(victim: UserExecutionContext) -> list[str]:
    run = victim.run_id
    return [
        run,  # the victim's real run ID
        run.upper(),
        run[:-1] + ("0" if run[-1] != "0" else "1"),  # a neighbour
        new_run_id(),  # a fresh guess
        "run_" + "0" * 26,
        "..",
        f"{run}:events",
        f"{run}:seq",
        f"{{{victim.user_id}}}:{run}",  # an attempt to address the victim's keys
        f"{victim.user_id}}}:{run}",
        f"{victim.user_id}:{run}",
        "*",
        "run_*",
        f"{run}\x00",
        f"{run}/../{run}",
        "",
    ]


async def test_another_user_can_never_read_a_users_run(
    alice: UserExecutionContext, bob: UserExecutionContext, replay: ReplayBuffer
) -> None:
    await fill(replay, alice, 5)
    for run_id in hostile_run_ids(alice):
        with pytest.raises((ReplayNotFoundError, InvalidReplayRequestError)) as caught:
            await replay.read_after(bob.user_id, run_id, 0)
        assert alice.user_id not in str(caught.value)
        with contextlib.suppress(InvalidReplayRequestError):
            assert await replay.last_seq(bob.user_id, run_id) == 0
    # The victim still has everything.
    assert len(await replay.read_after(alice.user_id, alice.run_id, 0)) == 5


async def test_same_run_id_under_two_users_are_two_separate_runs(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    mallory = UserExecutionContext(
        user_id=new_user_id(), thread_id=new_thread_id(), run_id=alice.run_id
    )
    await fill(replay, alice, 3)
    injected = await replay.append(mallory.user_id, alice.run_id, draft_for(mallory, "injected"))
    assert injected.seq == 1
    alice_events = await replay.read_after(alice.user_id, alice.run_id, 0)
    assert [envelope.payload["thought"] for envelope in alice_events] == [
        "event 1",
        "event 2",
        "event 3",
    ]
    assert await replay.last_seq(alice.user_id, alice.run_id) == 3
    mallory_events = await replay.read_after(mallory.user_id, alice.run_id, 0)
    assert [envelope.payload["thought"] for envelope in mallory_events] == ["injected"]


async def test_owner_check_holds_under_concurrent_users(replay: ReplayBuffer) -> None:
    contexts = [UserExecutionContext.from_request(new_user_id()) for _ in range(30)]
    await asyncio.gather(*(fill(replay, ctx, 4) for ctx in contexts))
    for index, ctx in enumerate(contexts):
        own = await replay.read_after(ctx.user_id, ctx.run_id, 0)
        assert {envelope.run_id for envelope in own} == {ctx.run_id}
        assert [envelope.seq for envelope in own] == [1, 2, 3, 4]
        other = contexts[(index + 1) % len(contexts)]
        with pytest.raises(ReplayNotFoundError):
            await replay.read_after(ctx.user_id, other.run_id, 0)


async def test_reading_returns_copies_that_cannot_change_the_buffer(
    alice: UserExecutionContext, replay: ReplayBuffer
) -> None:
    await fill(replay, alice, 1)
    [copy] = await replay.read_after(alice.user_id, alice.run_id, 0)
    copy.payload["thought"] = "tampered"
    [again] = await replay.read_after(alice.user_id, alice.run_id, 0)
    assert again.payload["thought"] == "event 1"


# -- memory backend ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_runs_expire_after_their_last_event(alice: UserExecutionContext) -> None:
    clock = FakeClock()
    replay = MemoryReplayBuffer(ttl_seconds=60, clock=clock)
    await fill(replay, alice, 2)
    clock.now += 59
    await fill(replay, alice, 1)  # refreshes the TTL
    clock.now += 59
    assert len(await replay.read_after(alice.user_id, alice.run_id, 0)) == 3
    clock.now += 2
    with pytest.raises(ReplayNotFoundError):
        await replay.read_after(alice.user_id, alice.run_id, 0)
    assert await replay.last_seq(alice.user_id, alice.run_id) == 0
    # A run written to after expiry starts again.
    assert (await replay.append(alice.user_id, alice.run_id, draft_for(alice))).seq == 1


async def test_memory_expired_runs_are_dropped_on_the_next_write() -> None:
    clock = FakeClock()
    replay = MemoryReplayBuffer(ttl_seconds=10, clock=clock)
    old = [UserExecutionContext.from_request(new_user_id()) for _ in range(5)]
    for ctx in old:
        await fill(replay, ctx, 1)
    clock.now += 11
    fresh = UserExecutionContext.from_request(new_user_id())
    await fill(replay, fresh, 1)
    assert len(replay) == 1


async def test_memory_keeps_at_most_max_runs(alice: UserExecutionContext) -> None:
    replay = MemoryReplayBuffer(max_runs=3)
    contexts = [UserExecutionContext.from_request(new_user_id()) for _ in range(4)]
    for ctx in contexts:
        await fill(replay, ctx, 1)
    assert len(replay) == 3
    with pytest.raises(ReplayNotFoundError):
        await replay.read_after(contexts[0].user_id, contexts[0].run_id, 0)
    assert len(await replay.read_after(contexts[3].user_id, contexts[3].run_id, 0)) == 1


def test_memory_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_events_per_run"):
        MemoryReplayBuffer(max_events_per_run=0)
    with pytest.raises(ValueError, match="ttl_seconds"):
        MemoryReplayBuffer(ttl_seconds=0)
    with pytest.raises(ValueError, match="max_runs"):
        MemoryReplayBuffer(max_runs=0)


async def test_draft_request_id_is_kept(alice: UserExecutionContext, replay: ReplayBuffer) -> None:
    other_request = new_request_id()
    draft = draft_for(alice).model_copy(update={"request_id": other_request})
    stored = await replay.append(alice.user_id, alice.run_id, draft)
    [read] = await replay.read_after(alice.user_id, alice.run_id, 0)
    assert stored.request_id == read.request_id == other_request
