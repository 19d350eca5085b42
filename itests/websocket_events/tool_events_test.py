"""Events during tool execution: what a user's connections see while the agent's tools run.

Every scenario runs in both compositions (tool calls dispatched by the in-process runner,
or by the platform behind the gRPC AgentService with the events streamed back to a gateway
node). The tools are the platform's built-in ones plus two registered for these scenarios
(one holding credentials in its input, one that crashes); the model is the deterministic
local provider, or the scripted outside LLM where a scenario needs chosen tool calls.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dispatch.engine.api import PermissionGroup
from dispatch.engine.registry import Tool, ToolInput, ToolInvocation, define_tool
from itests.websocket_events.deployment import Account, composition, deploy
from itests.websocket_events.outside_llm import Step, scripted_llm
from itests.websocket_events.wsclient import (
    Frame,
    ProtocolClient,
    assert_complete_run,
    assert_never_mentioned,
    event_types,
)

__all__ = ["composition"]  # the fixture, imported for pytest

THEME = "events during tool execution"


class VaultInput(ToolInput):
    label: str
    api_key: str
    password: str


class VaultOutput(BaseModel):
    stored: str


async def _store(invocation: ToolInvocation, args: VaultInput) -> VaultOutput:
    return VaultOutput(stored=args.label)


class ExplodeInput(ToolInput):
    reason: str


async def _explode(invocation: ToolInvocation, args: ExplodeInput) -> dict[str, Any]:
    raise RuntimeError(f"the tool broke down: {args.reason}")


def scenario_tools() -> list[Tool[Any]]:
    """``vault.store`` (takes credentials) and ``faulty.explode`` (always crashes)."""
    return [
        define_tool(
            name="vault.store",
            title="Vault",
            description="Stores a labelled credential pair.",
            group=PermissionGroup.BASIC,
            input_model=VaultInput,
            output_model=VaultOutput,
            handler=_store,
        ),
        define_tool(
            name="faulty.explode",
            title="Faulty",
            description="Always fails.",
            group=PermissionGroup.BASIC,
            input_model=ExplodeInput,
            handler=_explode,
        ),
    ]


def tool_pairs(events: list[Frame]) -> list[tuple[Frame, Frame]]:
    """Each ``tool_executing`` with the ``tool_completed`` that follows it."""
    pairs: list[tuple[Frame, Frame]] = []
    for index, event in enumerate(events):
        if event["type"] == "tool_executing":
            completed = events[index + 1]
            assert completed["type"] == "tool_completed", completed
            assert completed["payload"]["tool_name"] == event["payload"]["tool_name"]
            pairs.append((event, completed))
    assert len(pairs) == event_types(events).count("tool_completed")
    return pairs


async def run_on(ws: ProtocolClient, message: str) -> tuple[str, list[Frame]]:
    accepted = await ws.start("assistant", message)
    run_id = str(accepted["run_id"])
    events = await ws.events_of(run_id)
    assert_complete_run(events, run_id)
    return run_id, events


async def test_every_tool_call_is_one_tool_executing_and_one_tool_completed_on_the_wire(
    tmp_path: Path, composition: str
) -> None:
    plans = {
        "alice": ("remember that pairs matter; what is 2+3; what time is it", 3),
        "bob": ("what is 7*6", 1),
        "carol": ("remember that carol counts; list threads", 2),
    }
    expected_tools = {
        "alice": ["notes.add", "calculator", "time.now"],
        "bob": ["calculator"],
        "carol": ["notes.add", "threads.list"],
    }
    async with deploy(tmp_path, composition) as d:
        users = await d.accounts_named(*plans)
        clients = {u.name: await d.connect(u) for u in users}
        outcomes = await asyncio.gather(*(run_on(clients[u.name], plans[u.name][0]) for u in users))
        succeeded_calls = d.platform.metrics.value("ssot_tool_calls_total", {"status": "success"})
        for user, (_, events) in zip(users, outcomes, strict=True):
            pairs = tool_pairs(events)
            assert len(pairs) == plans[user.name][1]
            assert [executing["payload"]["tool_name"] for executing, _ in pairs] == (
                expected_tools[user.name]
            )
            assert all(completed["payload"]["success"] for _, completed in pairs)
            assert all(completed["payload"]["execution_time_ms"] >= 0 for _, completed in pairs)
            for executing, completed in pairs:
                assert completed["seq"] == executing["seq"] + 1
            await clients[user.name].assert_quiet()
        # The engine ran exactly the calls the wire showed, no more.
        assert succeeded_calls == sum(count for _, count in plans.values())
        run_ids = {u.name: run_id for u, (run_id, _) in zip(users, outcomes, strict=True)}
        for user in users:
            others = [o for o in users if o is not user]
            forbidden = {run_ids[o.name] for o in others}
            for other in others:
                forbidden |= other.footprint()
            assert_never_mentioned([clients[user.name]], forbidden)
        await d.assert_idle()


async def test_tool_inputs_are_sanitised_on_the_wire(tmp_path: Path, composition: str) -> None:
    async with (
        scripted_llm() as llm,
        deploy(tmp_path, composition, llm=llm, extra_tools=scenario_tools()) as d,
    ):
        alice, bob = await d.accounts_named("alice", "bob")
        clients = {u.user_id: await d.connect_many(u, 2) for u in (alice, bob)}
        planted: dict[str, list[str]] = {}
        markers: dict[str, str] = {}
        for user in (alice, bob):
            api_key = f"sk-{secrets.token_urlsafe(30)}"
            password = secrets.token_urlsafe(18)
            bearer = secrets.token_urlsafe(24)
            marker = f"vault-{user.name}-{secrets.token_hex(4)}"
            planted[user.user_id] = [api_key, password, bearer]
            markers[user.user_id] = marker
            llm.script(
                marker,
                Step(
                    tool_calls=[
                        (
                            "vault.store",
                            {"label": f"{marker} key", "api_key": api_key, "password": password},
                        ),
                        ("notes.add", {"content": f"{marker} uses Bearer {bearer}"}),
                    ]
                ),
                Step(text=f"stored for {marker}"),
            )

        async def run(user: Account) -> tuple[str, list[Frame]]:
            first, second = clients[user.user_id]
            run_id, events = await run_on(
                first, f"keep my credentials safe: {markers[user.user_id]}"
            )
            assert event_types(await second.events_of(run_id)) == event_types(events)
            return run_id, events

        (alice_run, alice_events), (bob_run, bob_events) = await asyncio.gather(
            run(alice), run(bob)
        )
        for user, events in ((alice, alice_events), (bob, bob_events)):
            marker = markers[user.user_id]
            (vault, vault_done), (note, note_done) = tool_pairs(events)
            assert vault["payload"]["tool_input"] == {
                "label": f"{marker} key",
                "api_key": "[REDACTED]",
                "password": "[REDACTED]",
            }
            assert vault_done["payload"]["success"] is True
            assert note["payload"]["tool_input"]["content"].startswith(f"{marker} uses ")
            assert "[REDACTED]" in note["payload"]["tool_input"]["content"]
            assert note_done["payload"]["success"] is True
            # The tools did receive the real values: the note holds the user's own text.
            [stored] = await d.notes_of(user)
            assert stored.content == f"{marker} uses Bearer {planted[user.user_id][2]}"
        every_client = clients[alice.user_id] + clients[bob.user_id]
        every_secret = planted[alice.user_id] + planted[bob.user_id]
        assert_never_mentioned(every_client, every_secret, whose="a secret")
        assert_never_mentioned(
            clients[alice.user_id], bob.footprint() | {bob_run, markers[bob.user_id]}
        )
        assert_never_mentioned(
            clients[bob.user_id], alice.footprint() | {alice_run, markers[alice.user_id]}
        )
        for client in every_client:
            await client.assert_quiet()
        await d.assert_idle()


async def test_a_failing_tool_still_completes_its_event_pair(
    tmp_path: Path, composition: str
) -> None:
    async with (
        scripted_llm() as llm,
        deploy(tmp_path, composition, llm=llm, extra_tools=scenario_tools()) as d,
    ):
        alice, bob = await d.accounts_named("alice", "bob")
        alice_ws, bob_ws = await d.connect(alice), await d.connect(bob)
        alice_marker = f"crash-{secrets.token_hex(4)}"
        bob_marker = f"divide-{secrets.token_hex(4)}"
        llm.script(
            alice_marker,
            Step(
                tool_calls=[
                    ("faulty.explode", {"reason": alice_marker}),
                    ("calculator", {"expression": "6*7"}),
                ]
            ),
            Step(text="recovered"),
        )
        llm.script(
            bob_marker,
            Step(tool_calls=[("calculator", {"expression": "1/0"})]),
            Step(text="cannot divide"),
        )
        (alice_run, alice_events), (bob_run, bob_events) = await asyncio.gather(
            run_on(alice_ws, f"try {alice_marker}"), run_on(bob_ws, f"try {bob_marker}")
        )
        (explode, exploded), (calc, calculated) = tool_pairs(alice_events)
        assert explode["payload"]["tool_name"] == "faulty.explode"
        assert exploded["payload"]["success"] is False
        assert calc["payload"]["tool_name"] == "calculator"
        assert calculated["payload"]["success"] is True
        assert "42" in json.dumps(calculated["payload"]["result_summary"])
        [(divide, divided)] = tool_pairs(bob_events)
        assert divide["payload"]["tool_input"] == {"expression": "1/0"}
        assert divided["payload"]["success"] is False
        assert "zero" in json.dumps(divided["payload"]["result_summary"]).lower()
        # A tool failure is a result for the model, not the end of the run.
        assert alice_events[-1]["payload"]["success"] is True
        assert bob_events[-1]["payload"]["success"] is True
        assert llm.calls(alice_marker) == llm.calls(bob_marker) == 2
        await alice_ws.assert_quiet()
        await bob_ws.assert_quiet()
        assert_never_mentioned([alice_ws], bob.footprint() | {bob_run, bob_marker})
        assert_never_mentioned([bob_ws], alice.footprint() | {alice_run, alice_marker})
        await d.assert_idle()


async def test_concurrent_users_tool_events_never_cross(tmp_path: Path, composition: str) -> None:
    async with deploy(tmp_path, composition) as d:
        users = await d.accounts_named(*(f"user{index}" for index in range(8)))
        clients = {u.user_id: await d.connect(u) for u in users}
        markers = {u.user_id: f"mark-{u.name}-{secrets.token_hex(4)}" for u in users}
        operands = {u.user_id: 101 + index for index, u in enumerate(users)}

        async def run(user: Account) -> tuple[str, list[Frame]]:
            n = operands[user.user_id]
            return await run_on(
                clients[user.user_id], f"remember that {markers[user.user_id]}; what is {n}*{n}"
            )

        outcomes = dict(
            zip(
                (u.user_id for u in users),
                await asyncio.gather(*(run(u) for u in users)),
                strict=True,
            )
        )
        for user in users:
            _, events = outcomes[user.user_id]
            n = operands[user.user_id]
            (note, noted), (calc, calculated) = tool_pairs(events)
            assert note["payload"]["tool_input"] == {"content": markers[user.user_id]}
            assert markers[user.user_id] in json.dumps(noted["payload"]["result_summary"])
            assert calc["payload"]["tool_input"] == {"expression": f"{n}*{n}"}
            assert str(n * n) in json.dumps(calculated["payload"]["result_summary"])
            assert [note.content for note in await d.notes_of(user)] == [markers[user.user_id]]
            await clients[user.user_id].assert_quiet()
        for user in users:
            forbidden: set[str] = set()
            for other in users:
                if other is not user:
                    forbidden |= other.footprint() | {
                        markers[other.user_id],
                        outcomes[other.user_id][0],
                        f"{operands[other.user_id]}*{operands[other.user_id]}",
                    }
            assert_never_mentioned([clients[user.user_id]], forbidden)
        await d.assert_idle()


async def test_events_of_one_run_arrive_in_order_on_every_connection_of_its_user(
    tmp_path: Path, composition: str
) -> None:
    message = "remember that order is kept; what is 9*9; what time is it; list threads"
    async with deploy(tmp_path, composition) as d:
        alice, bob = await d.accounts_named("alice", "bob")
        connections = {u.user_id: await d.connect_many(u, 3) for u in (alice, bob)}

        async def run(user: Account) -> tuple[str, list[Frame]]:
            starter, *others = connections[user.user_id]
            run_id, events = await run_on(starter, message)
            assert len(tool_pairs(events)) == 4
            for other in others:
                seen = await other.events_of(run_id)
                # The same events, in the same order, on every connection of the user.
                assert [(e["seq"], e["type"], e["payload"]) for e in seen] == [
                    (e["seq"], e["type"], e["payload"]) for e in events
                ]
            return run_id, events

        (alice_run, _), (bob_run, _) = await asyncio.gather(run(alice), run(bob))
        for client in connections[alice.user_id] + connections[bob.user_id]:
            await client.assert_quiet()
        assert_never_mentioned(connections[alice.user_id], bob.footprint() | {bob_run})
        assert_never_mentioned(connections[bob.user_id], alice.footprint() | {alice_run})
        await d.assert_idle()
