"""Per-user connection slots: the limit holds, also under concurrent handshakes."""

from __future__ import annotations

import asyncio

import pytest

from websocket.auth.slots import InMemoryConnectionSlots


async def test_limit_is_enforced_per_user() -> None:
    slots = InMemoryConnectionSlots(limit=2)
    assert await slots.acquire("usr_a", "conn_1")
    assert await slots.acquire("usr_a", "conn_2")
    assert not await slots.acquire("usr_a", "conn_3")
    assert await slots.acquire("usr_b", "conn_4")  # another user is unaffected
    assert slots.count("usr_a") == 2
    assert slots.count("usr_b") == 1


async def test_release_frees_a_slot_and_is_idempotent() -> None:
    slots = InMemoryConnectionSlots(limit=1)
    assert await slots.acquire("usr_a", "conn_1")
    await slots.release("conn_1")
    await slots.release("conn_1")
    await slots.release("conn_unknown")
    assert slots.count("usr_a") == 0
    assert await slots.acquire("usr_a", "conn_2")


async def test_concurrent_acquires_never_exceed_the_limit() -> None:
    slots = InMemoryConnectionSlots(limit=5)
    granted = await asyncio.gather(*(slots.acquire("usr_a", f"conn_{i}") for i in range(20)))
    assert sum(granted) == 5
    assert slots.count("usr_a") == 5


async def test_a_connection_cannot_hold_two_slots() -> None:
    slots = InMemoryConnectionSlots(limit=5)
    assert await slots.acquire("usr_a", "conn_1")
    with pytest.raises(ValueError, match="already"):
        await slots.acquire("usr_b", "conn_1")


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        InMemoryConnectionSlots(limit=0)
