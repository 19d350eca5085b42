"""Data factory + context: a data scope is opened for one UserExecutionContext and acts for
that context's user only, in process and over gRPC.

Every scenario runs the real platform (auth, data on SQLite under tmp_path, agents with
the local LLM provider) with several users at once and ends by checking that no scope,
connection, run or task is left.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import grpc.aio
import pytest

from context.api import UserExecutionContext
from data import data_pb2, data_pb2_grpc
from data.api import MessageRole, NotAUserContextError, NotFoundError, UserDataAccess
from dispatch.agents.api import RunNotFoundError, RunState
from itests.data_isolation.deployment import (
    FORBIDDEN_OTHER_USER,
    Composition,
    UserSession,
    assert_idle,
    assert_mentions_none,
    composition,
    deployment,
)

THEME = "data factory + context"

__all__ = ["THEME", "composition"]


async def test_a_data_scope_belongs_to_the_user_of_its_context_only(
    composition: Composition, tmp_path: Path
) -> None:
    async with deployment(composition, tmp_path) as dep:
        users = await dep.users(*(f"user{i}" for i in range(8)))
        everyone_open = asyncio.Barrier(len(users))
        open_scopes: dict[str, int] = {}

        async def work(session: UserSession) -> tuple[UserExecutionContext, list[str], list[str]]:
            ctx = await session.context()
            assert ctx.user_id == session.user_id
            async with session.data.create_user_context(ctx) as scope:
                assert scope.context == ctx
                if await everyone_open.wait() == 0 and composition == "inprocess":
                    open_scopes.update(dep.platform.internals.data.stats().scopes_per_user)
                thread = await scope.threads.create(title=f"{session.name}'s plans")
                await scope.messages.append(
                    thread.id, role=MessageRole.USER, content=f"{session.name} says hi"
                )
                await scope.notes.add(f"{session.name} keeps this", tags=[session.name])
                titles = [t.title for t in await scope.threads.list()]
                notes = [n.content for n in await scope.notes.list()]
            return ctx, titles, notes

        results = await asyncio.gather(*(work(session) for session in users))

        for session, (ctx, titles, notes) in zip(users, results, strict=True):
            assert ctx.user_id == session.user_id
            assert titles == [f"{session.name}'s plans"]
            assert notes == [f"{session.name} keeps this"]
            others = [other.name for other in users if other is not session]
            assert_mentions_none((titles, notes), *(f"{name}'" for name in others))
        assert len({ctx.user_id for ctx, _, _ in results}) == len(users)
        assert len({ctx.request_id for ctx, _, _ in results}) == len(users)
        if composition == "inprocess":
            # While all were open, each user held exactly one scope: its own.
            assert open_scopes == {session.user_id: 1 for session in users}
        assert_idle(dep.platform)


async def test_anything_but_a_user_execution_context_is_refused(
    composition: Composition, tmp_path: Path
) -> None:
    async with deployment(composition, tmp_path) as dep:
        alice, bob = await dep.users("alice", "bob")
        bob_ctx = await bob.context()
        bob_secret = f"bob-secret-{secrets.token_hex(4)}"
        impostors: list[Any] = [
            None,
            bob.user_id,
            bob_ctx.to_dict(),
            SimpleNamespace(
                user_id=bob.user_id, thread_id=bob_ctx.thread_id, run_id=bob_ctx.run_id
            ),
            await bob.caller(bob_ctx),  # a verified ToolCaller is still not a context
        ]
        opened_before = dep.platform.internals.data.stats().scopes_opened

        async def alice_tries() -> list[NotAUserContextError]:
            refusals: list[NotAUserContextError] = []
            for impostor in impostors:
                for provider in (alice.data, dep.platform.data):
                    with pytest.raises(NotAUserContextError) as raised:
                        provider.create_user_context(impostor)
                    refusals.append(raised.value)
                await asyncio.sleep(0)  # let Bob's work interleave
            return refusals

        async def bob_works() -> list[str]:
            async with bob.data.create_user_context(bob_ctx) as scope:
                await scope.notes.add(bob_secret)
                return [note.content for note in await scope.notes.list()]

        refusals, bob_notes = await asyncio.gather(alice_tries(), bob_works())

        assert bob_notes == [bob_secret]
        assert len(refusals) == 2 * len(impostors)
        for refusal in refusals:
            assert refusal.error_code == "NOT_A_USER_CONTEXT"
            assert refusal.grpc_status_name == "INVALID_ARGUMENT"
            assert_mentions_none(refusal, bob_secret, bob_ctx.thread_id)
        # Only Bob's work opened scopes: one unit of work in process, one per call over gRPC.
        opened = dep.platform.internals.data.stats().scopes_opened - opened_before
        assert opened == (1 if composition == "inprocess" else 2)

        if dep.host is not None:
            # The server refuses a request context that is not an encoded context too.
            assert alice.remote is not None
            stub = data_pb2_grpc.DataAccessStub(alice.remote.channel)
            with pytest.raises(grpc.aio.AioRpcError) as rpc:
                await stub.ListNotes(
                    data_pb2.ListNotesRequest(),
                    metadata=(("x-ssot-context", "not-a-context"),),
                )
            assert rpc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert_mentions_none(rpc.value.details(), bob_secret)

        # Alice's own context works, and shows nothing of Bob's.
        async with await alice.open() as scope:
            assert await scope.notes.list() == []
            assert await scope.notes.search(bob_secret) == []
        assert_idle(dep.platform)


async def test_concurrent_scopes_of_many_users_write_and_read_only_their_own_rows(
    composition: Composition, tmp_path: Path
) -> None:
    scopes_per_user = 3
    async with deployment(composition, tmp_path) as dep:
        users = await dep.users(*(f"user{i}" for i in range(10)))
        tags = {session.user_id: f"tag{secrets.token_hex(5)}" for session in users}

        async def unit(session: UserSession, index: int) -> None:
            tag = tags[session.user_id]
            async with await session.open() as scope:
                thread = await scope.threads.create(title=f"{tag} thread {index}")
                for turn in range(3):
                    await scope.messages.append(
                        thread.id, role=MessageRole.USER, content=f"{tag} message {index}.{turn}"
                    )
                await scope.notes.add(f"{tag} note {index}", tags=[tag])
                messages = await scope.messages.list(thread.id)
                assert [m.content for m in messages] == [
                    f"{tag} message {index}.{turn}" for turn in range(3)
                ]
                found = await scope.notes.search(tag)
                assert found, "the user's own note is found in its own scope"
                assert all(tag in note.content for note in found)

        await asyncio.gather(
            *(unit(session, index) for session in users for index in range(scopes_per_user))
        )

        async def read_back(session: UserSession) -> tuple[list[str], list[str], list[str]]:
            async with await session.open() as scope:
                threads = [t.title for t in await scope.threads.list()]
                notes = [n.content for n in await scope.notes.list()]
                foreign = [
                    n.content
                    for other, tag in tags.items()
                    if other != session.user_id
                    for n in await scope.notes.search(tag)
                ]
            return threads, notes, foreign

        readings = await asyncio.gather(*(read_back(session) for session in users))
        for session, (threads, notes, foreign) in zip(users, readings, strict=True):
            tag = tags[session.user_id]
            assert sorted(threads) == [f"{tag} thread {i}" for i in range(scopes_per_user)]
            assert sorted(notes) == [f"{tag} note {i}" for i in range(scopes_per_user)]
            assert foreign == []
        assert_idle(dep.platform)


async def test_a_child_context_s_scope_sees_the_same_user_s_data(
    composition: Composition, tmp_path: Path
) -> None:
    async with deployment(composition, tmp_path) as dep:
        alice, bob = await dep.users("alice", "bob")

        async def chain(session: UserSession) -> tuple[str, list[str], list[UserExecutionContext]]:
            root = await session.context()
            async with session.data.create_user_context(root) as scope:
                thread = await scope.threads.create(title=f"{session.name} root thread")
                await scope.notes.add(f"{session.name} from the root")
            child = root.create_child_context("tool_call")
            grandchild = child.create_child_context("sub_step")
            seen: list[UserExecutionContext] = []
            for depth, ctx in enumerate((child, grandchild), start=1):
                async with session.data.create_user_context(ctx) as scope:
                    seen.append(scope.context)
                    assert (await scope.threads.get(thread.id)).title == (
                        f"{session.name} root thread"
                    )
                    assert f"{session.name} from the root" in [
                        n.content for n in await scope.notes.list()
                    ]
                    await scope.notes.add(f"{session.name} from depth {depth}")
            async with session.data.create_user_context(root) as scope:
                notes = sorted(n.content for n in await scope.notes.list())
            return thread.id, notes, seen

        (
            (alice_thread, alice_notes, alice_seen),
            (bob_thread, bob_notes, bob_seen),
        ) = await asyncio.gather(chain(alice), chain(bob))
        for session, notes, seen in ((alice, alice_notes, alice_seen), (bob, bob_notes, bob_seen)):
            assert notes == sorted(
                [
                    f"{session.name} from the root",
                    f"{session.name} from depth 1",
                    f"{session.name} from depth 2",
                ]
            )
            assert [ctx.operation_depth for ctx in seen] == [1, 2]
            assert {ctx.user_id for ctx in seen} == {session.user_id}

        # A child context of Bob's reaches Bob's data only, never Alice's thread...
        bob_child = (await bob.context()).create_child_context("lookup")
        async with bob.data.create_user_context(bob_child) as scope:
            with pytest.raises(NotFoundError) as missing:
                await scope.threads.get(alice_thread)
            assert_mentions_none(missing.value, "alice root thread", "alice from")
            assert (await scope.threads.get(bob_thread)).title == "bob root thread"
        # ...and Alice cannot use a child of Bob's context as her own.
        with pytest.raises(FORBIDDEN_OTHER_USER):
            async with alice.data.create_user_context(bob_child) as scope:
                await scope.threads.get(bob_thread)
        assert_idle(dep.platform)


async def test_notes_written_by_an_agent_run_belong_to_that_run_s_user(
    composition: Composition, tmp_path: Path
) -> None:
    async with deployment(composition, tmp_path) as dep:
        users = await dep.users("alice", "bob", "carol")
        secret = {session.user_id: f"code{secrets.token_hex(5)}" for session in users}

        results = await asyncio.gather(
            *(
                session.run(f"remember that my locker code is {secret[session.user_id]}")
                for session in users
            )
        )

        runs = {session.user_id: info for session, (info, _) in zip(users, results, strict=True)}
        for session, (info, events) in zip(users, results, strict=True):
            assert info.state is RunState.COMPLETED
            assert {event.run_id for event in events} == {info.run_id}
            assert {event.thread_id for event in events} == {info.thread_id}
            assert [event.type.value for event in events].count("tool_completed") == 1
            others = [secret[other.user_id] for other in users if other is not session]
            assert_mentions_none([event.payload for event in events], *others)

        async def notes_and_runs(session: UserSession) -> tuple[list[str], list[str], list[str]]:
            async with await session.open() as scope:
                notes = [n.content for n in await scope.notes.list()]
                run_ids = [r.id for r in await scope.runs.list()]
                foreign = [
                    n.content
                    for other, code in secret.items()
                    if other != session.user_id
                    for n in await scope.notes.search(code)
                ]
            return notes, run_ids, foreign

        readings = await asyncio.gather(*(notes_and_runs(session) for session in users))
        for session, (notes, run_ids, foreign) in zip(users, readings, strict=True):
            assert notes == [f"my locker code is {secret[session.user_id]}"]
            assert run_ids == [runs[session.user_id].run_id]
            assert foreign == []

        # Another user's run is unknown both to the agent service and to the data layer.
        alice, bob, _ = users
        alice_run = runs[alice.user_id]
        with pytest.raises(RunNotFoundError):
            await bob.agents.get_run(await bob.caller(), alice_run.run_id)
        scope: UserDataAccess
        async with await bob.open() as scope:
            with pytest.raises(NotFoundError):
                await scope.runs.get(alice_run.run_id)
            with pytest.raises(NotFoundError):
                await scope.messages.list(alice_run.thread_id)
        assert_idle(dep.platform)
