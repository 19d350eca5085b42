"""Data factory + auth: whose data a request reaches is decided by the verified token.

In process, the user's token is verified for the request context before the data factory
opens a scope (``platform.caller``); over gRPC the auth interceptor verifies the bearer
token and the ``x-ssot-context`` entry and the data servicer opens the scope for the
verified context. Either way a request that names another user, carries a forged,
revoked or service token, or no token at all, reaches nobody's data, while the other
users keep working at the same time.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import SecretStr

from auth.api import AuthError
from auth.testing import forge_token
from auth.token_format import b64url_decode
from context.api import UserExecutionContext, get_current_context, new_thread_id
from data import data_pb2, data_pb2_grpc
from data.api import MessageRole, NotFoundError, UserDataAccessProvider
from itests.data_isolation.deployment import (
    FORBIDDEN_OTHER_USER,
    UNAUTHENTICATED,
    Composition,
    Deployment,
    ShiftableClock,
    UserSession,
    assert_idle,
    assert_mentions_none,
    composition,
    deployment,
    grpc_status_of,
)
from server.testing import FAST_AUTH

THEME = "data factory + auth"

__all__ = ["THEME", "composition"]

_SERVICE_ID = "svc-itest"
_SERVICE_SECRET = "svc-itest-secret-0123456789abcdef"


def _user_field_names() -> list[str]:
    """Every field of every DataAccess request message that could name a user."""
    service = data_pb2.DESCRIPTOR.services_by_name["DataAccess"]
    return [
        f"{method.input_type.name}.{field.name}"
        for method in service.methods
        for field in method.input_type.fields
        if "user" in field.name.lower()
    ]


async def _owners_of_thread(dep: Deployment, thread_id: str) -> list[tuple[str, str]]:
    """(user_id, title) of every stored thread row with this ID, read with raw SQL on the
    embedded SQLite database, where no row-level filter applies."""
    probe = UserExecutionContext.from_request("usr_storage_probe_0001")
    async with dep.platform.internals.data.create_user_context(probe) as scope:
        result = await scope.execute_sql(
            "SELECT user_id, title FROM threads WHERE id = :id", {"id": thread_id}
        )
    return sorted((str(row["user_id"]), str(row["title"])) for row in result.rows)


async def test_the_data_user_comes_from_the_verified_token_never_from_the_request(
    composition: Composition, tmp_path: Path
) -> None:
    # No request message of the data service has a field that could name a user.
    assert _user_field_names() == []
    async with deployment(composition, tmp_path) as dep:
        alice, bob = await dep.users("alice", "bob")
        shared_thread = new_thread_id()

        async def same_request(session: UserSession) -> tuple[str, str]:
            """The very same request bytes; only the token differs."""
            assert get_current_context() is None
            if session.remote is not None:
                # A bare call: no request context, only the bearer token.
                stub = data_pb2_grpc.DataAccessStub(session.remote.channel)
                thread = await stub.CreateThread(
                    data_pb2.CreateThreadRequest(thread_id=shared_thread, title="plans")
                )
                note = await stub.AddNote(data_pb2.AddNoteRequest(content="same words"))
                return thread.id, note.id
            ctx = await session.context()  # built from what the token says, nothing else
            async with dep.platform.data.create_user_context(ctx) as scope:
                created = await scope.threads.create(title="plans", thread_id=shared_thread)
                added = await scope.notes.add("same words")
            return created.id, added.id

        (alice_thread, alice_note), (bob_thread, bob_note) = await asyncio.gather(
            same_request(alice), same_request(bob)
        )
        assert alice_thread == bob_thread == shared_thread
        # Two rows with the one ID: each owned by the user whose token made the request.
        assert await _owners_of_thread(dep, shared_thread) == sorted(
            [(alice.user_id, "plans"), (bob.user_id, "plans")]
        )
        for session, note_id, other_note in (
            (alice, alice_note, bob_note),
            (bob, bob_note, alice_note),
        ):
            async with await session.open() as scope:
                assert [n.id for n in await scope.notes.list()] == [note_id]
                with pytest.raises(NotFoundError):
                    await scope.notes.get(other_note)

        # A request context naming Bob, sent with Alice's token, is refused outright.
        bob_ctx = UserExecutionContext.from_request(bob.user_id, thread_id=shared_thread)
        with pytest.raises(FORBIDDEN_OTHER_USER) as refused:
            async with alice.data.create_user_context(bob_ctx) as scope:
                await scope.threads.rename(shared_thread, "taken over")
        assert grpc_status_of(refused.value) == "PERMISSION_DENIED"
        assert (await _owners_of_thread(dep, shared_thread)) == sorted(
            [(alice.user_id, "plans"), (bob.user_id, "plans")]
        )
        assert_idle(dep.platform)


def _forged_token_for(victim: str, template: str) -> str:
    """A token shaped like ``template`` (same header and claims) but naming ``victim``
    and signed with a key the platform has never seen."""
    header_b64, payload_b64, _ = template.split(".")
    header: dict[str, Any] = json.loads(b64url_decode(header_b64))
    payload: dict[str, Any] = json.loads(b64url_decode(payload_b64))
    payload["sub"] = victim
    return forge_token(header, payload, key=ed25519.Ed25519PrivateKey.generate())


async def test_a_forged_context_cannot_read_another_user_s_threads(
    composition: Composition, tmp_path: Path
) -> None:
    async with deployment(composition, tmp_path) as dep:
        alice, bob = await dep.users("alice", "bob")
        secret = f"bob-diary-{secrets.token_hex(4)}"
        async with await bob.open() as scope:
            diary = await scope.threads.create(title=secret)
            await scope.messages.append(diary.id, role=MessageRole.USER, content=f"{secret} text")

        # What Alice might know or guess: Bob's user ID and his thread's ID.
        forged = UserExecutionContext.from_request(bob.user_id, thread_id=diary.id)
        forged_token = _forged_token_for(bob.user_id, alice.token)
        with_forged_token = await dep.data_for_token(forged_token)
        without_token = await dep.data_for_token(None)
        attempts: list[tuple[UserDataAccessProvider, tuple[type[Exception], ...]]] = [
            (alice.data, FORBIDDEN_OTHER_USER),  # her real token, Bob's identity
            (with_forged_token, UNAUTHENTICATED),  # a token claiming to be Bob's
            (without_token, UNAUTHENTICATED),  # no token at all
        ]

        async def attack() -> list[Exception]:
            refusals: list[Exception] = []
            for provider, expected in attempts:
                for read in ("get", "list", "messages"):
                    with pytest.raises(expected) as raised:
                        async with provider.create_user_context(forged) as scope:
                            if read == "get":
                                await scope.threads.get(diary.id)
                            elif read == "list":
                                await scope.threads.list()
                            else:
                                await scope.messages.list(diary.id)
                    refusals.append(raised.value)
            # With her own context, Bob's thread ID is simply not found.
            async with await alice.open() as scope:
                with pytest.raises(NotFoundError) as missing:
                    await scope.threads.get(diary.id)
                refusals.append(missing.value)
                assert await scope.threads.list() == []
            return refusals

        async def bob_reads() -> list[str]:
            titles: list[str] = []
            for _ in range(5):
                async with await bob.open() as scope:
                    titles.append((await scope.threads.get(diary.id)).title)
                    assert [m.content for m in await scope.messages.list(diary.id)] == [
                        f"{secret} text"
                    ]
            return titles

        refusals, titles = await asyncio.gather(attack(), bob_reads())
        assert titles == [secret] * 5
        assert len(refusals) == 3 * 3 + 1
        for refusal in refusals:
            assert_mentions_none(refusal, secret)
        assert_idle(dep.platform)


async def test_a_revoked_token_gets_no_data(composition: Composition, tmp_path: Path) -> None:
    clock = ShiftableClock()
    async with deployment(composition, tmp_path, auth_clock=clock) as dep:
        alice, bob = await dep.users("alice", "bob")
        for session in (alice, bob):
            async with await session.open() as scope:
                await scope.notes.add(f"{session.name}'s kept note")
        alice_ctx = await alice.context()  # a context she obtained before the revocation
        bob_before = await bob.context()

        await dep.platform.auth.revoke_user_tokens(alice.user_id)
        clock.advance(0.01)  # later logins are issued after the revocation mark

        async def alice_tries() -> list[Exception]:
            refusals: list[Exception] = []
            for action in ("list", "add", "search"):
                with pytest.raises(UNAUTHENTICATED) as raised:
                    async with alice.data.create_user_context(alice_ctx) as scope:
                        if action == "list":
                            await scope.notes.list()
                        elif action == "add":
                            await scope.notes.add("written after the revocation")
                        else:
                            await scope.notes.search("kept")
                refusals.append(raised.value)
            with pytest.raises(AuthError):
                await alice.caller()  # and no verified caller for an agent run either
            return refusals

        async def bob_works() -> list[str]:
            async with bob.data.create_user_context(bob_before) as scope:
                await scope.notes.add("bob goes on")
            async with await bob.open() as scope:
                return sorted(n.content for n in await scope.notes.list())

        refusals, bob_notes = await asyncio.gather(alice_tries(), bob_works())
        assert bob_notes == ["bob goes on", "bob's kept note"]
        for refusal in refusals:
            assert "revoked" in str(refusal).lower(), refusal
            assert_mentions_none(refusal, "bob goes on", "bob's kept note", "alice's kept note")

        # Her data was kept, untouched, for her next login; nothing was written meanwhile.
        again = await dep.relogin(alice)
        async with await again.open() as scope:
            assert [n.content for n in await scope.notes.list()] == ["alice's kept note"]
        assert_idle(dep.platform)


async def test_a_service_token_cannot_read_a_user_s_data_without_that_user_s_context(
    composition: Composition, tmp_path: Path
) -> None:
    overrides = {**FAST_AUTH, "service_credentials": {_SERVICE_ID: SecretStr(_SERVICE_SECRET)}}
    async with deployment(composition, tmp_path, auth_overrides=overrides) as dep:
        alice, bob = await dep.users("alice", "bob")
        for session in (alice, bob):
            async with await session.open() as scope:
                await scope.notes.add(f"{session.name}'s private note")
        service = await (await dep.auth()).issue_service_token(_SERVICE_ID, _SERVICE_SECRET)
        alice_ctx, bob_ctx = await alice.context(), await bob.context()

        if dep.host is None:
            # In process a service token verifies no user at all: no caller, no data,
            # with or without a user's context.
            as_service = await dep.data_for_token(service.token)

            async def refused(ctx: UserExecutionContext) -> Exception:
                with pytest.raises(AuthError) as raised:
                    async with as_service.create_user_context(ctx) as scope:
                        await scope.notes.list()
                return raised.value

            refusals = await asyncio.gather(refused(alice_ctx), refused(bob_ctx))
            for refusal in refusals:
                assert "WRONG_TOKEN_TYPE" in str(refusal)
                assert_mentions_none(refusal, "private note")
        else:
            remote = await dep.remote_for_token(service.token)
            stub = data_pb2_grpc.DataAccessStub(remote.channel)

            async def without_context() -> grpc.aio.AioRpcError:
                assert get_current_context() is None
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await stub.ListNotes(data_pb2.ListNotesRequest())
                return raised.value

            async def acting_for(ctx: UserExecutionContext) -> list[str]:
                async with remote.data.create_user_context(ctx) as scope:
                    return [n.content for n in await scope.notes.list()]

            bare, for_alice, for_bob = await asyncio.gather(
                without_context(), acting_for(alice_ctx), acting_for(bob_ctx)
            )
            assert bare.code() is grpc.StatusCode.UNAUTHENTICATED
            assert_mentions_none(bare.details(), "private note")
            # With a user's context the service acts for that user, and that user only.
            assert for_alice == ["alice's private note"]
            assert for_bob == ["bob's private note"]

        # The users themselves are unaffected.
        for session in (alice, bob):
            async with await session.open() as scope:
                assert [n.content for n in await scope.notes.list()] == [
                    f"{session.name}'s private note"
                ]
        assert_idle(dep.platform)


async def test_two_users_see_only_their_own_threads_messages_and_notes(
    composition: Composition, tmp_path: Path
) -> None:
    async with deployment(composition, tmp_path) as dep:
        alice, bob = await dep.users("alice", "bob")
        thread_id = new_thread_id()  # both choose the same thread ID

        async def conversation(session: UserSession) -> dict[str, Any]:
            name = session.name
            async with await session.open() as scope:
                thread = await scope.threads.create(title=f"{name} trip", thread_id=thread_id)
                messages = [
                    await scope.messages.append(
                        thread.id, role=MessageRole.USER, content=f"{name} asks {i}"
                    )
                    for i in range(3)
                ]
                notes = [
                    await scope.notes.add(f"{name} packs {item}", tags=[name, item])
                    for item in ("boots", "maps", "tent")
                ]
                await scope.notes.delete(notes[2].id)
                renamed = await scope.threads.rename(thread.id, f"{name} trip (final)")
                return {
                    "thread": renamed,
                    "messages": messages,
                    "notes": notes[:2],
                    "deleted": notes[2],
                    "listed": [m.content for m in await scope.messages.list(thread.id)],
                    "found": [n.content for n in await scope.notes.search("packs")],
                }

        mine = dict(
            zip(
                (alice.user_id, bob.user_id),
                await asyncio.gather(conversation(alice), conversation(bob)),
                strict=True,
            )
        )

        for session, other in ((alice, bob), (bob, alice)):
            own, theirs = mine[session.user_id], mine[other.user_id]
            assert own["listed"] == [f"{session.name} asks {i}" for i in range(3)]
            assert sorted(own["found"]) == [f"{session.name} packs {i}" for i in ("boots", "maps")]
            async with await session.open() as scope:
                # The shared thread ID names each user's own thread.
                assert (await scope.threads.get(thread_id)).title == f"{session.name} trip (final)"
                assert [t.id for t in await scope.threads.list()] == [thread_id]
                for message in theirs["messages"]:
                    with pytest.raises(NotFoundError) as missing:
                        await scope.messages.get(message.id)
                    assert_mentions_none(missing.value, message.content)
                for note in (*theirs["notes"], theirs["deleted"]):
                    with pytest.raises(NotFoundError):
                        await scope.notes.get(note.id)
                    with pytest.raises(NotFoundError):
                        await scope.notes.delete(note.id)
                listed = [n.content for n in await scope.notes.list()]
                assert sorted(listed) == [f"{session.name} packs {i}" for i in ("boots", "maps")]
                assert await scope.notes.search(other.name) == []
                shown = [m.content for m in await scope.messages.list(thread_id)]
                assert shown == [f"{session.name} asks {i}" for i in range(3)]
        assert_idle(dep.platform)
