"""Graceful shutdown: stop accepting, let running runs finish (up to a deadline), then
close every connection with 1001. Plus start-up facts: the bound address."""

from __future__ import annotations

import asyncio

import pytest

from websocket.auth.testing import TestUser
from websocket.gateway.conftest import SEQUENCE, GatewayFactory, Harness, eventually


async def test_port_zero_binds_a_free_port_and_exposes_it(harness: Harness) -> None:
    host, port = harness.gateway.address
    assert host == "127.0.0.1"
    assert port > 0
    assert harness.gateway.url == f"ws://127.0.0.1:{port}/ws"


async def test_shutdown_closes_open_connections_with_1001(
    harness: Harness, alice: TestUser, bob: TestUser
) -> None:
    clients = [await harness.connect(alice), await harness.connect(bob)]
    await harness.gateway.shutdown()
    for client in clients:
        code, reason = await client.closed()
        assert code == 1001
        assert reason == "server shutting down"


async def test_shutdown_lets_a_running_run_finish_first_and_refuses_new_work(
    harness: Harness, alice: TestUser
) -> None:
    harness.runs.pause_after = {2}
    client = await harness.connect(alice)
    accepted = await harness.start_run(client)
    first = [await client.recv(), await client.recv()]
    await harness.runs.next_pause()

    shutdown = asyncio.create_task(harness.gateway.shutdown(grace_seconds=30))
    await eventually(lambda: not harness.gateway.accepting)
    with pytest.raises(OSError):  # the listener is gone: nothing new connects
        await harness.raw(token=alice.access_token)
    await client.send({"type": "start_agent", "agent": "research", "message": "more?"})
    assert (await client.recv())["error_code"] == "SHUTTING_DOWN"
    assert not shutdown.done()

    harness.runs.proceed()
    rest = await client.run_events(accepted["run_id"])
    assert [event["type"] for event in first + rest] == list(SEQUENCE)
    assert (await client.closed())[0] == 1001
    await shutdown


async def test_shutdown_does_not_wait_past_its_deadline(harness: Harness, alice: TestUser) -> None:
    harness.runs.pause_after = {1}
    client = await harness.connect(alice)
    await harness.start_run(client)
    await client.recv()
    await harness.runs.next_pause()  # this run will not finish on its own
    await asyncio.wait_for(harness.gateway.shutdown(grace_seconds=0.05), timeout=5)
    assert (await client.closed())[0] == 1001


async def test_shutdown_is_idempotent(harness: Harness) -> None:
    await asyncio.gather(harness.gateway.shutdown(), harness.gateway.shutdown())
    await harness.gateway.shutdown()


async def test_cancelling_serve_forever_shuts_down(make_harness: GatewayFactory) -> None:
    harness = await make_harness()
    alice = await harness.user("alice")
    serving = asyncio.create_task(harness.gateway.serve_forever())
    client = await harness.connect(alice)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert (await client.closed())[0] == 1001
