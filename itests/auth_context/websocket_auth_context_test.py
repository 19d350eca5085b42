"""WebSocket auth + context: a handshake binds a connection to the user of its token, and
to nobody else, for as long as it lives.

Real ``websockets`` clients against the real gateway on 127.0.0.1, in both compositions:
``inprocess`` (the embedded platform's gateway, tokens verified by the in-process auth
service, runs on the in-process runner) and ``grpc`` (a gateway node of its own that
verifies tokens with the auth service over gRPC and starts runs on the AgentService over
gRPC). Users connect and act concurrently; every scenario checks what each connection
received, what the gateway holds for it, and that it is all gone at the end.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from auth.api import AuthErrorCode
from context.api import IDKind, UserExecutionContext, parse_id
from itests.auth_context.platform import (
    Deployment,
    UserSession,
    composition,
    eventually,
    open_deployment,
    removal_of,
    wait_removed,
)
from itests.auth_context.sockets import admit, refuse
from itests.auth_context.tokens import tampered
from server.testing import WsClient
from websocket.auth.api import AUTH_SUBPROTOCOL, CLOSE_POLICY_VIOLATION

THEME = "WebSocket auth + context"

__all__ = ["composition"]  # the fixture, imported for pytest


def connection_ids(deployment: Deployment, session: UserSession) -> set[str]:
    return {
        info.connection_id for info in deployment.gateway.router.connections_of(session.user_id)
    }


def context_on(session: UserSession, client: WsClient) -> UserExecutionContext:
    """A request context of ``session``'s user that names ``client``'s connection."""
    return UserExecutionContext.from_request(
        session.user_id, websocket_client_id=str(client.welcome["connection_id"])
    )


async def run_to_end(client: WsClient, message: str) -> tuple[str, list[dict[str, object]]]:
    accepted = await client.start("assistant", message)
    run_id = str(accepted["run_id"])
    return run_id, await client.events_until_end(run_id)


async def test_two_users_websocket_handshakes_bind_contexts_of_their_own_user_and_connection(
    composition: str, tmp_path: Path
) -> None:
    async with open_deployment(composition, tmp_path, with_gateway=True) as deployment:
        alice, bob = await deployment.new_users("alice", "bob")
        url = deployment.gateway.ws_url
        a1, a2, b1, b2 = await asyncio.gather(
            admit(url, header_token=alice.token),
            admit(url, header_token=alice.token),
            admit(url, header_token=bob.token),
            admit(url, header_token=bob.token),
        )
        ids = [str(client.welcome["connection_id"]) for client in (a1, a2, b1, b2)]
        assert len(set(ids)) == 4
        assert {parse_id(value).kind for value in ids} == {IDKind.CONNECTION}
        assert [client.user_id for client in (a1, a2, b1, b2)] == [alice.user_id] * 2 + [
            bob.user_id
        ] * 2
        assert connection_ids(deployment, alice) == set(ids[:2])
        assert connection_ids(deployment, bob) == set(ids[2:])

        # The gateway holds each connection's credential for its own user only.
        credentials = deployment.gateway.credentials
        assert credentials.token_for(context_on(alice, a1)) == alice.token
        assert credentials.token_for(context_on(bob, b2)) == bob.token
        foreign = UserExecutionContext.from_request(
            bob.user_id, websocket_client_id=ids[0]
        )  # Bob's user on Alice's connection
        assert credentials.token_for(foreign) is None

        # Runs started on a connection act as its user and reach that user's connections.
        (alice_run, alice_events), (bob_run, bob_events) = await asyncio.gather(
            run_to_end(a1, "remember that alice connected first"),
            run_to_end(b2, "remember that bob connected too"),
        )
        assert await a2.events_until_end(alice_run) == alice_events
        assert await b1.events_until_end(bob_run) == bob_events
        for client in (a1, a2, b1, b2):
            await client.assert_quiet()
        runs = deployment.gateway.runs
        assert runs.service_run_id(alice.user_id, alice_run) is not None
        assert runs.service_run_id(bob.user_id, alice_run) is None
        assert runs.service_run_id(alice.user_id, bob_run) is None
        assert await alice.notes() == ["alice connected first"]
        assert await bob.notes() == ["bob connected too"]
        for client in (a1, a2, b1, b2):
            await client.close()
        await deployment.assert_idle(connections_open=True)


async def test_a_token_in_the_jwt_subprotocol_authenticates_exactly_its_own_user(
    composition: str, tmp_path: Path
) -> None:
    async with open_deployment(composition, tmp_path, with_gateway=True) as deployment:
        alice, bob = await deployment.new_users("alice", "bob")
        url = deployment.gateway.ws_url
        a1, b1, both, forged, broken = await asyncio.gather(
            admit(url, subprotocol_token=alice.token),
            admit(url, subprotocol_token=bob.token),
            # Alice's header and Bob's subprotocol at once: which one counts is ambiguous.
            refuse(url, header_token=alice.token, subprotocol_token=bob.token),
            # Alice's token edited to name Bob, carried in the subprotocol.
            refuse(url, subprotocol_token=tampered(alice.token, sub=bob.user_id)),
            refuse(url, subprotocol_value="jwt.not*base64url"),
        )
        assert (a1.user_id, b1.user_id) == (alice.user_id, bob.user_id)
        # The server selects jwt-auth, never the entry that carries the token.
        assert a1.ws.subprotocol == b1.ws.subprotocol == AUTH_SUBPROTOCOL
        credentials = deployment.gateway.credentials
        assert credentials.token_for(context_on(alice, a1)) == alice.token
        assert credentials.token_for(context_on(bob, b1)) == bob.token

        assert both.error_code == "MULTIPLE_TOKENS"
        assert forged.error_code == "INVALID_TOKEN"
        assert AuthErrorCode.BAD_SIGNATURE.value in str(forged.frame["message"])
        assert broken.error_code == "INVALID_TOKEN"
        for refusal in (both, forged, broken):
            assert refusal.close_code == CLOSE_POLICY_VIOLATION
            for token in (alice.token, bob.token):
                assert token not in refusal.raw
        assert connection_ids(deployment, alice) == {a1.welcome["connection_id"]}
        assert connection_ids(deployment, bob) == {b1.welcome["connection_id"]}

        (_, alice_events), (_, bob_events) = await asyncio.gather(
            run_to_end(a1, "remember that alice used the subprotocol"),
            run_to_end(b1, "remember that bob used the subprotocol"),
        )
        assert alice_events[-1]["type"] == bob_events[-1]["type"] == "agent_completed"
        await a1.assert_quiet()
        await b1.assert_quiet()
        assert await alice.notes() == ["alice used the subprotocol"]
        assert await bob.notes() == ["bob used the subprotocol"]
        await a1.close()
        await b1.close()
        await deployment.assert_idle(connections_open=True)


async def test_a_query_string_token_is_refused_while_a_header_token_of_another_user_connects(
    composition: str, tmp_path: Path
) -> None:
    async with open_deployment(composition, tmp_path, with_gateway=True) as deployment:
        alice, bob = await deployment.new_users("alice", "bob")
        url = deployment.gateway.ws_url
        *refusals, b1 = await asyncio.gather(
            refuse(url, query=f"?token={alice.token}"),
            refuse(url, query=f"?access_token={alice.token}", header_token=alice.token),
            refuse(url, query=f"?jwt={alice.token}"),
            refuse(url, query=f"?next=%2Fhome&session={alice.token}"),
            admit(url, header_token=bob.token),
        )
        for refusal in refusals:
            assert refusal.error_code == "TOKEN_IN_QUERY_STRING"
            assert refusal.close_code == CLOSE_POLICY_VIOLATION
            assert alice.token not in refusal.raw
        assert b1.user_id == bob.user_id
        # Nothing was admitted for Alice: no connection, no held credential.
        assert connection_ids(deployment, alice) == set()
        assert len(deployment.gateway.credentials) == 1

        # The same user with the header alone is admitted, and sees only her own run.
        a1 = await admit(url, header_token=alice.token)
        (alice_run, _), (bob_run, bob_events) = await asyncio.gather(
            run_to_end(a1, "what is 3+4"), run_to_end(b1, "what is 5+6")
        )
        assert {event["run_id"] for event in bob_events} == {bob_run}
        await a1.assert_quiet()
        await b1.assert_quiet()
        assert alice_run != bob_run
        await a1.close()
        await b1.close()
        await deployment.assert_idle(connections_open=True)


async def test_a_refresh_on_a_live_connection_accepts_only_a_token_of_the_same_user(
    composition: str, tmp_path: Path
) -> None:
    async with open_deployment(composition, tmp_path, with_gateway=True) as deployment:
        alice, bob = await deployment.new_users("alice", "bob")
        url = deployment.gateway.ws_url
        a1, a2, b1 = await asyncio.gather(
            admit(url, header_token=alice.token),
            admit(url, header_token=alice.token),
            admit(url, header_token=bob.token),
        )
        alice_new, bob_new = await asyncio.gather(
            deployment.login(alice.account), deployment.login(bob.account)
        )

        hijacked = removal_of(deployment.gateway.router, str(a1.welcome["connection_id"]))

        async def hijack() -> tuple[dict[str, object], int | None]:
            await a1.send({"type": "refresh_token", "access_token": bob_new})
            return await a1.recv(), await a1.closed()

        async def retry_then_refresh() -> tuple[dict[str, object], dict[str, object]]:
            await a2.send({"type": "refresh_token", "access_token": "not-a-token"})
            rejected = await a2.recv()
            await a2.send({"type": "refresh_token", "access_token": alice_new})
            return rejected, await a2.recv()

        async def bob_refreshes() -> dict[str, object]:
            await b1.send({"type": "refresh_token", "access_token": bob_new})
            return await b1.recv()

        (error, close_code), (rejected, refreshed), bob_refreshed = await asyncio.gather(
            hijack(), retry_then_refresh(), bob_refreshes()
        )
        assert error["type"] == "authentication_error"
        assert error["error_code"] == "USER_MISMATCH"
        assert close_code == CLOSE_POLICY_VIOLATION
        assert bob_new not in str(error)
        assert (rejected["type"], rejected["error_code"]) == ("error", "INVALID_TOKEN")
        assert refreshed["type"] == bob_refreshed["type"] == "token_refreshed"

        # Each connection now holds its own user's new token; Bob's never reached Alice.
        credentials = deployment.gateway.credentials
        assert credentials.token_for(context_on(alice, a2)) == alice_new
        assert credentials.token_for(context_on(bob, b1)) == bob_new
        await wait_removed(hijacked, "the hijacked connection leaves the router")
        assert connection_ids(deployment, alice) == {a2.welcome["connection_id"]}
        (alice_run, _), (bob_run, _) = await asyncio.gather(
            run_to_end(a2, "remember that alice refreshed"),
            run_to_end(b1, "remember that bob refreshed"),
        )
        await a2.assert_quiet()
        await b1.assert_quiet()
        assert await alice.notes() == ["alice refreshed"]
        assert await bob.notes() == ["bob refreshed"]
        assert alice_run != bob_run
        await a2.close()
        await b1.close()
        await deployment.assert_idle(connections_open=True)


async def test_a_users_sixth_connection_is_refused_while_another_user_still_connects(
    composition: str, tmp_path: Path
) -> None:
    async with open_deployment(composition, tmp_path, with_gateway=True) as deployment:
        limit = deployment.platform.settings.max_connections_per_user
        assert limit == 5
        alice, bob = await deployment.new_users("alice", "bob")
        url = deployment.gateway.ws_url
        opened = await asyncio.gather(
            *(admit(url, header_token=alice.token) for _ in range(limit)),
            *(admit(url, header_token=bob.token) for _ in range(limit - 1)),
        )
        alice_clients, bob_clients = list(opened[:limit]), list(opened[limit:])
        sixth, bobs_last = await asyncio.gather(
            refuse(url, header_token=alice.token), admit(url, header_token=bob.token)
        )
        bob_clients.append(bobs_last)
        assert sixth.error_code == "TOO_MANY_CONNECTIONS"
        assert sixth.close_code == CLOSE_POLICY_VIOLATION
        assert len(connection_ids(deployment, alice)) == limit
        assert len(connection_ids(deployment, bob)) == limit
        assert {client.user_id for client in bob_clients} == {bob.user_id}

        # Closing one of Alice's connections frees its slot, for her only.
        closing = alice_clients.pop()
        gone = removal_of(deployment.gateway.router, str(closing.welcome["connection_id"]))
        await closing.close()
        await wait_removed(gone, "the closed connection leaves the router")
        await eventually(
            lambda: (
                len(connection_ids(deployment, alice)) == limit - 1
                and len(deployment.gateway.credentials) == 2 * limit - 1
            ),
            "the closed connection's slot is freed",
        )
        again, bob_refused = await asyncio.gather(
            admit(url, header_token=alice.token), refuse(url, header_token=bob.token)
        )
        alice_clients.append(again)
        assert bob_refused.error_code == "TOO_MANY_CONNECTIONS"
        for client in alice_clients + bob_clients:
            await client.assert_quiet()
            await client.close()
        await eventually(
            lambda: len(deployment.gateway.credentials) == 0,
            "every closed connection gives its slot back",
        )
        await deployment.assert_idle()
