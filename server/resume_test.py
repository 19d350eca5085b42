"""Acceptance 4: a connection dropped mid-run reconnects, resumes, and misses nothing.

The model stand-in answers like the local provider but holds each call until the test
opens its gate, so the run can be stopped at known points: the connection drops after
``agent_started``; while nobody listens the run emits its tool events; a new connection
sends ``resume`` with the last seq it saw, gets the missed events replayed, and then the
rest live. Put together, the client has every event exactly once, seq 1..n.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

from dispatch.agents.testing import llm_factory_with
from dispatch.llm.providers.base import ProviderCall, ProviderResult, ProviderStreamItem
from dispatch.llm.providers.local import LocalProvider
from server.testing import WsClient, new_account, running_platform

WAIT = 10.0


class GatedProvider:
    """The local provider, but call ``n`` waits until ``open(n)`` (calls count from 0)."""

    def __init__(self, gates: int) -> None:
        self._local = LocalProvider()
        self._gates = [asyncio.Event() for _ in range(gates)]
        self.entered = [asyncio.Event() for _ in range(gates)]
        self._calls = 0

    @property
    def name(self) -> str:
        return "gated"

    @property
    def default_model(self) -> str:
        return "gated-1"

    def open(self, index: int) -> None:
        self._gates[index].set()

    async def complete(self, call: ProviderCall) -> ProviderResult:
        index = self._calls
        self._calls += 1
        if index < len(self._gates):
            self.entered[index].set()
            await self._gates[index].wait()
        return await self._local.complete(call)

    async def stream(self, call: ProviderCall) -> AsyncGenerator[ProviderStreamItem, None]:
        yield await self.complete(call)

    async def aclose(self) -> None:
        return None


async def test_reconnect_and_resume_gives_the_complete_sequence(tmp_path: Path) -> None:
    provider = GatedProvider(gates=2)
    async with running_platform(tmp_path, llm_factory=llm_factory_with(provider)) as platform:
        alice = await new_account(platform.auth, "alice")
        bob = await new_account(platform.auth, "bob")
        seen: list[dict[str, object]] = []

        first = await WsClient.connect(platform.ws_url, alice.access_token)
        run = await first.start("assistant", "what is 12*(3+4)?")
        run_id = run["run_id"]
        seen.append(await first.recv())
        assert seen[0]["type"] == "agent_started"
        await asyncio.wait_for(provider.entered[0].wait(), WAIT)
        await first.close()  # dropped in the middle of the run

        # The run goes on without a listener: thinking, the tool call, then the next
        # model call waits.
        provider.open(0)
        await asyncio.wait_for(provider.entered[1].wait(), WAIT)

        async with (
            await WsClient.connect(platform.ws_url, alice.access_token) as second,
            await WsClient.connect(platform.ws_url, bob.access_token) as intruder,
        ):
            # Another user cannot resume it: nothing of it is revealed.
            await intruder.send({"type": "resume", "run_id": run_id, "after_seq": 0})
            refused = await intruder.recv()
            assert refused["type"] == "error", refused
            assert refused["error_code"] == "RUN_NOT_FOUND"

            await second.send({"type": "resume", "run_id": run_id, "after_seq": seen[-1]["seq"]})
            replayed = [await second.recv() for _ in range(3)]
            assert [event["type"] for event in replayed] == [
                "agent_thinking",
                "tool_executing",
                "tool_completed",
            ]
            seen.extend(replayed)
            provider.open(1)
            seen.extend(await second.events_until_end(run_id))
            await second.assert_quiet()
            await intruder.assert_quiet()

        assert [event["seq"] for event in seen] == list(range(1, len(seen) + 1))
        assert {event["run_id"] for event in seen} == {run_id}
        assert seen[-1]["type"] == "agent_completed"
        stored = await platform.replay.read_after(alice.user_id, run_id, 0)
        assert [(e.seq, e.type.value) for e in stored] == [
            (event["seq"], event["type"]) for event in seen
        ]
