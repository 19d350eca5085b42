"""Acceptance 5: two gateway nodes sharing Redis serve one user's connections together.

One dispatch side (an embedded platform served over gRPC on 127.0.0.1:0) and two gateway
nodes built by :func:`build_gateway_stack`, each with its own router and replay buffer
object but the same hermetic Redis (pub/sub fan-out, Redis Streams replay). A user's run
started on node A is seen live - complete, seq gapless - on the user's connection to
node B, and can be resumed there; another user connected to B sees nothing of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from itests.harness import RedisServer
from server.composition import build_gateway_stack, serve_grpc
from server.testing import (
    WsClient,
    eventually,
    new_account,
    running_platform,
    settings_for_tests,
)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


async def test_a_run_on_one_gateway_is_seen_live_on_the_other(
    tmp_path: Path, redis_url: str
) -> None:
    async with running_platform(tmp_path / "dispatch") as platform:
        host = await serve_grpc(platform)
        node = settings_for_tests(tmp_path / "gateway", redis_url=redis_url)
        a = await build_gateway_stack(node, token_auth=platform.auth, dispatch_address=host.address)
        b = await build_gateway_stack(node, token_auth=platform.auth, dispatch_address=host.address)
        try:
            assert a.ws_url != b.ws_url
            alice = await new_account(platform.auth, "alice")
            bob = await new_account(platform.auth, "bob")
            async with (
                await WsClient.connect(a.ws_url, alice.access_token) as on_a,
                await WsClient.connect(b.ws_url, alice.access_token) as on_b,
                await WsClient.connect(b.ws_url, bob.access_token) as bob_on_b,
            ):
                run = await on_a.start("assistant", "remember that B sees this; what is 2*21?")
                events_a = await on_a.events_until_end(run["run_id"])
                events_b = await on_b.events_until_end(run["run_id"])

                assert [e["seq"] for e in events_b] == list(range(1, len(events_b) + 1))
                assert events_b[0]["type"] == "agent_started"
                assert events_b[-1]["type"] == "agent_completed"
                assert events_b == events_a
                assert {e["thread_id"] for e in events_b} == {run["thread_id"]}

                # A new connection to node B resumes the run from the shared replay buffer.
                async with await WsClient.connect(b.ws_url, alice.access_token) as later:
                    await later.send({"type": "resume", "run_id": run["run_id"], "after_seq": 2})
                    replayed = [await later.recv() for _ in range(len(events_b) - 2)]
                    assert replayed == events_b[2:]
                    await later.assert_quiet()

                await on_a.assert_quiet()
                await on_b.assert_quiet()
                await bob_on_b.assert_quiet()
                await bob_on_b.send({"type": "resume", "run_id": run["run_id"], "after_seq": 0})
                refused = await bob_on_b.recv()
                assert refused["type"] == "error"
                assert refused["error_code"] == "RUN_NOT_FOUND"
            assert await a.runs.wait_idle(10.0)
            await eventually(
                lambda: not any(a.leftovers().values()) and not any(b.leftovers().values())
            )
        finally:
            await a.aclose()
            await b.aclose()
            await host.stop()
