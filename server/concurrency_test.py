"""Acceptance 3: 100 users x 3 connections each, running agents at the same time.

The real gateway of an embedded platform (SQLite, the local LLM provider). Each of the 300
connections starts one run, so every user has three runs going at once. A user's events
go to all of that user's connections, so every connection must end up with exactly the
user's three runs - each complete, its ``seq`` gapless from 1 - and nothing of any other
user's runs.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import Any

from context.log_config import configure_logging
from server.testing import (
    TERMINAL_EVENTS,
    TestAccount,
    WsClient,
    new_account,
    running_platform,
    settings_for_tests,
)

USERS = 100
CONNECTIONS_PER_USER = 3
MESSAGE = "what is 6*7?"


async def read_user_runs(client: WsClient, runs: int) -> dict[str, list[dict[str, Any]]]:
    """Frames of one connection until ``runs`` runs have ended, grouped by run."""
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    ended = 0
    for frame in client.pending:
        by_run[frame["run_id"]].append(frame)
        ended += frame["type"] in TERMINAL_EVENTS
    client.pending.clear()
    while ended < runs:
        frame = await client.recv()
        assert "run_id" in frame, frame
        by_run[frame["run_id"]].append(frame)
        ended += frame["type"] in TERMINAL_EVENTS
    return dict(by_run)


async def test_hundred_users_three_connections_each(tmp_path: Path) -> None:
    configure_logging("warning", log_format="console")
    settings = settings_for_tests(
        tmp_path / "platform",
        max_runs_per_user=CONNECTIONS_PER_USER,
        max_runs_total=USERS * CONNECTIONS_PER_USER,
    )
    async with running_platform(tmp_path, settings=settings) as platform:
        accounts: list[TestAccount] = await asyncio.gather(
            *(new_account(platform.auth, f"user{index}") for index in range(USERS))
        )
        clients: dict[str, list[WsClient]] = {}
        try:
            for account in accounts:
                clients[account.user_id] = list(
                    await asyncio.gather(
                        *(
                            WsClient.connect(platform.ws_url, account.access_token)
                            for _ in range(CONNECTIONS_PER_USER)
                        )
                    )
                )
            every = [client for group in clients.values() for client in group]
            accepted = await asyncio.gather(
                *(client.start("assistant", MESSAGE) for client in every)
            )
            runs_of: dict[str, dict[str, str]] = defaultdict(dict)
            for client, reply in zip(every, accepted, strict=True):
                runs_of[client.user_id][reply["run_id"]] = reply["thread_id"]
            assert all(len(runs) == CONNECTIONS_PER_USER for runs in runs_of.values())

            received = await asyncio.wait_for(
                asyncio.gather(*(read_user_runs(c, CONNECTIONS_PER_USER) for c in every)), 120
            )
            for client, by_run in zip(every, received, strict=True):
                own = runs_of[client.user_id]
                assert set(by_run) == set(own), "a connection saw another user's run"
                for run_id, events in by_run.items():
                    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
                    assert events[0]["type"] == "agent_started"
                    assert events[-1]["type"] == "agent_completed", events[-1]
                    assert {event["thread_id"] for event in events} == {own[run_id]}
                    kinds = [event["type"] for event in events]
                    assert kinds.count("tool_executing") == kinds.count("tool_completed") == 1
            # Every connection of a user saw the same events of each run.
            for user_id, group in clients.items():
                views = [
                    {
                        run_id: [(e["seq"], e["type"]) for e in events]
                        for run_id, events in by_run.items()
                    }
                    for client, by_run in zip(every, received, strict=True)
                    if client.user_id == user_id
                ]
                assert len(views) == len(group)
                assert all(view == views[0] for view in views)
            for client in every:
                await client.assert_quiet()
        finally:
            await asyncio.gather(
                *(client.close() for group in clients.values() for client in group)
            )
        assert await platform.runs.wait_idle(30.0)
        stats = platform.internals.runner.stats()
        assert stats.finished_by_state == {"completed": USERS * CONNECTIONS_PER_USER}
        assert stats.refused_user_limit == stats.refused_global_limit == 0
