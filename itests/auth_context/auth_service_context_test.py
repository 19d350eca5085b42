"""Auth service + execution context: a verified token is the only source of a context's user.

Each scenario runs in both compositions (``inprocess`` and ``grpc``, see
:mod:`itests.auth_context.platform`): accounts are registered and logged in through the
auth service, tokens are verified into callers whose contexts the data, LLM and agent
services then act for. Users act concurrently; every scenario checks that what one user
did or saw names nobody else, and that the deployment ends with nothing left open.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from auth.api import AuthError, AuthErrorCode
from context.api import (
    MAX_OPERATION_DEPTH,
    ContextDepthExceededError,
    IDKind,
    UserExecutionContext,
    parse_id,
)
from data.api import DataError
from dispatch.engine.api import CallerMismatchError, ToolCaller, ToolStatus
from itests.auth_context.platform import UserSession, composition, open_deployment
from itests.auth_context.tokens import hostile_variants

THEME = "auth service + execution context"

__all__ = ["composition"]  # the fixture, imported for pytest

USERS = 12


async def test_concurrent_logins_yield_contexts_bound_to_their_own_user_only(
    composition: str, tmp_path: Path
) -> None:
    async with open_deployment(composition, tmp_path) as deployment:
        accounts = await asyncio.gather(
            *(deployment.register(f"user{index}") for index in range(USERS))
        )
        # Everyone logs in again at the same time: a second session each.
        tokens = await asyncio.gather(*(deployment.login(account) for account in accounts))
        sessions = await asyncio.gather(
            *(deployment.session(a, t) for a, t in zip(accounts, tokens, strict=True))
        )
        user_ids = [account.user_id for account in accounts]
        assert len(set(user_ids)) == USERS

        async def act(session: UserSession) -> tuple[ToolCaller, str, list[str]]:
            caller = await session.caller()
            usage = await session.usage(caller.context)
            await session.add_note(f"written by {session.user_id}", caller.context)
            return caller, usage.user_id, await session.notes(caller.context)

        outcomes = await asyncio.gather(*(act(session) for session in sessions))
        verified = await asyncio.gather(
            *(deployment.auth.authenticate_token(token) for token in tokens)
        )

        for account, (caller, usage_user, notes), result in zip(
            accounts, outcomes, verified, strict=True
        ):
            others = [user for user in user_ids if user != account.user_id]
            assert result.success
            assert (result.user_id, result.email) == (account.user_id, account.email)
            assert caller.user_id == caller.context.user_id == account.user_id
            assert caller.context.is_root
            assert usage_user == account.user_id  # the service bound this user's context
            assert notes == [f"written by {account.user_id}"]
            seen = f"{caller.model_dump_json()} {notes} {result.model_dump_json()}"
            assert not [other for other in others if other in seen]
        await deployment.assert_idle()


async def test_all_ids_of_concurrently_authenticated_users_contexts_are_distinct(
    composition: str, tmp_path: Path
) -> None:
    requests_per_user = 3
    async with open_deployment(composition, tmp_path) as deployment:
        sessions = await deployment.new_users(*(f"user{index}" for index in range(10)))

        async def requests_of(session: UserSession) -> list[ToolCaller]:
            callers = await asyncio.gather(*(session.caller() for _ in range(requests_per_user)))
            # Each request's thread is created under the request's own thread ID.
            for caller in callers:
                async with session.data.create_user_context(caller.context) as scope:
                    await scope.threads.create(title="t", thread_id=caller.context.thread_id)
            return list(callers)

        per_user = await asyncio.gather(*(requests_of(session) for session in sessions))
        contexts = [caller.context for callers in per_user for caller in callers]
        total = len(sessions) * requests_per_user
        for kind, values in (
            (IDKind.THREAD, [ctx.thread_id for ctx in contexts]),
            (IDKind.RUN, [ctx.run_id for ctx in contexts]),
            (IDKind.REQUEST, [ctx.request_id for ctx in contexts]),
        ):
            assert len(set(values)) == total, kind
            assert {parse_id(value).kind for value in values} == {kind}
        every_id = [
            value
            for ctx in contexts
            for value in (ctx.thread_id, ctx.run_id, ctx.request_id, ctx.user_id)
        ]
        assert len(set(every_id)) == total * 3 + len(sessions)

        verified = await asyncio.gather(
            *(deployment.auth.authenticate_token(session.token) for session in sessions)
        )
        assert len({result.session_id for result in verified}) == len(sessions)
        assert len({result.jti for result in verified}) == len(sessions)

        for session, callers in zip(sessions, per_user, strict=True):
            assert {caller.user_id for caller in callers} == {session.user_id}
            async with session.data.create_user_context(callers[0].context) as scope:
                threads = await scope.threads.list()
            assert {thread.id for thread in threads} == {c.context.thread_id for c in callers}
        await deployment.assert_idle()


async def test_an_invalid_token_creates_no_context_while_another_users_valid_token_does(
    composition: str, tmp_path: Path
) -> None:
    async with open_deployment(composition, tmp_path) as deployment:
        alice_account, bob_account = await asyncio.gather(
            deployment.register("alice"), deployment.register("bob")
        )
        bob_pair = await deployment.login_pair(bob_account)
        # Alice's own token turned into Bob's, and Bob's refresh token used as an access one.
        hostile = hostile_variants(alice_account.access_token, sub=bob_account.user_id)
        hostile["refresh_as_access"] = bob_pair.refresh_token
        attackers = {
            name: await deployment.session(alice_account, token) for name, token in hostile.items()
        }
        bob = await deployment.session(bob_account)
        alice = await deployment.session(alice_account)
        data_stats = deployment.platform.internals.data.stats
        opened_before = data_stats().scopes_opened

        async def attack(name: str, session: UserSession) -> tuple[str, str]:
            verified = await deployment.auth.authenticate_token(session.token)
            assert not verified.success
            assert verified.user_id is None
            with pytest.raises(AuthError) as refused_caller:
                await session.caller()
            said = f"{refused_caller.value.message} {verified.error}"
            assert bob_account.user_id not in said
            if deployment.grpc:
                # The token goes out with a context naming Bob: nothing is bound for it.
                bob_ctx = UserExecutionContext.from_request(bob_account.user_id)
                with pytest.raises(DataError) as refused:
                    await session.add_note(f"planted by {name}", bob_ctx)
                assert refused.value.grpc_status_name == "UNAUTHENTICATED"
            return name, str(verified.error_code)

        async def work() -> tuple[ToolCaller, str, list[str]]:
            caller = await bob.caller()
            await bob.add_note("bob's own note", caller.context)
            usage = await bob.usage(caller.context)
            return caller, usage.user_id, await bob.notes(caller.context)

        async def attacks() -> list[tuple[str, str]]:
            return list(await asyncio.gather(*(attack(name, s) for name, s in attackers.items())))

        refusals, (caller, usage_user, notes) = await asyncio.gather(attacks(), work())

        opened = data_stats().scopes_opened - opened_before
        codes = dict(refusals)
        assert codes["tampered"] == AuthErrorCode.BAD_SIGNATURE
        assert codes["resigned"] == AuthErrorCode.BAD_SIGNATURE
        assert codes["refresh_as_access"] == AuthErrorCode.WRONG_TOKEN_TYPE
        assert caller.user_id == usage_user == bob_account.user_id
        assert notes == ["bob's own note"]
        assert await alice.notes() == []
        # Bob's two data calls opened the only scopes: the refused tokens opened none.
        assert opened == 2
        await deployment.assert_idle()


async def test_child_contexts_of_an_authenticated_request_keep_its_user_through_the_chain(
    composition: str, tmp_path: Path
) -> None:
    async with open_deployment(composition, tmp_path) as deployment:
        alice, bob = await deployment.new_users("alice", "bob")

        async def chain_of(session: UserSession) -> list[UserExecutionContext]:
            root = (await session.caller()).context
            chain = [root]
            for depth in range(1, MAX_OPERATION_DEPTH + 1):
                chain.append(chain[-1].create_child_context(f"step_{depth}"))
            with pytest.raises(ContextDepthExceededError):
                chain[-1].create_child_context("one_too_deep")
            for depth, ctx in enumerate(chain):
                # Every link is verified again with the token and acted on by the services.
                caller = await session.caller(ctx)
                assert caller.user_id == session.user_id
                result = await session.engine.execute_tool(
                    caller, "notes.add", {"content": f"{session.user_id} at depth {depth}"}
                )
                assert result.status is ToolStatus.SUCCESS
            assert (await session.usage(chain[-1])).user_id == session.user_id
            return chain

        alice_chain, bob_chain = await asyncio.gather(chain_of(alice), chain_of(bob))

        for session, chain in ((alice, alice_chain), (bob, bob_chain)):
            root = chain[0]
            for depth, ctx in enumerate(chain):
                assert ctx.user_id == session.user_id
                assert (ctx.thread_id, ctx.run_id) == (root.thread_id, root.run_id)
                assert ctx.operation_depth == depth
                if depth:
                    assert ctx.parent_request_id == chain[depth - 1].request_id
            notes = await session.notes(chain[-1])
            expected = [f"{session.user_id} at depth {depth}" for depth in range(len(chain))]
            assert notes == sorted(expected)

        # A link of Bob's chain never becomes Alice's, whatever token carries it.
        for session, foreign in ((alice, bob_chain[5]), (bob, alice_chain[MAX_OPERATION_DEPTH])):
            with pytest.raises(CallerMismatchError):
                await session.caller(foreign)
            if deployment.grpc:
                with pytest.raises(DataError) as refused:
                    await session.notes(foreign)
                assert refused.value.grpc_status_name == "PERMISSION_DENIED"
        assert len(await alice.notes()) == len(await bob.notes()) == MAX_OPERATION_DEPTH + 1
        await deployment.assert_idle()


async def test_revoking_one_users_tokens_leaves_another_users_tokens_and_contexts_valid(
    composition: str, tmp_path: Path
) -> None:
    async with open_deployment(composition, tmp_path) as deployment:
        alice_account, bob_account = await asyncio.gather(
            deployment.register("alice"), deployment.register("bob")
        )
        alice_second, bob_second = await asyncio.gather(
            deployment.login(alice_account), deployment.login(bob_account)
        )
        alice = await deployment.session(alice_account)
        bob = await deployment.session(bob_account)
        bob_again = await deployment.session(bob_account, bob_second)
        bob_before = await bob.caller()  # a context made before the revocation
        await alice.caller()

        async def revoke_alice() -> None:
            await deployment.revoke_own_tokens(alice)

        async def bob_keeps_working(session: UserSession, marker: str) -> None:
            caller = await session.caller(bob_before.context)
            await session.add_note(marker, caller.context)

        await asyncio.gather(
            revoke_alice(),
            bob_keeps_working(bob, "during revocation 1"),
            bob_keeps_working(bob_again, "during revocation 2"),
        )

        for token in (alice_account.access_token, alice_second):
            result = await deployment.auth.authenticate_token(token)
            assert (result.success, result.error_code) == (False, AuthErrorCode.REVOKED)
        with pytest.raises(AuthError):
            await alice.caller()
        if deployment.grpc:
            with pytest.raises(DataError) as refused:
                await alice.notes()
            assert refused.value.grpc_status_name == "UNAUTHENTICATED"

        for token in (bob_account.access_token, bob_second):
            result = await deployment.auth.authenticate_token(token)
            assert (result.success, result.user_id) == (True, bob_account.user_id)
        # Bob's context from before the revocation still carries him, end to end.
        caller = await bob.caller(bob_before.context)
        assert (await bob.usage(bob_before.context)).user_id == bob_account.user_id
        handle, events = await bob.run(caller, "assistant", "what is 6*7?")
        assert events[-1].type.value == "agent_completed"
        assert {event.run_id for event in events} == {handle.run_id}
        assert (await bob.get_run(caller, handle.run_id)).state.value == "completed"
        assert await bob.notes() == ["during revocation 1", "during revocation 2"]
        await deployment.assert_idle()
