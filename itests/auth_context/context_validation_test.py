"""Context validation across auth boundaries: the ``x-ssot-context`` a call carries must be
well formed and belong to the user of its verified token, or nothing happens.

The header exists only on the wire, so every scenario calls the services (data, tools,
LLM, agents) with the generated stubs and hand-made metadata, in both compositions of
that boundary (see :mod:`itests.auth_context.wire`): the services verify tokens with the
auth service in their own process (``inprocess``) or over gRPC (``grpc``). In each
scenario legitimate users call at the same time as the hostile ones and are served; the
hostile calls get the stated status, change nothing and reveal nothing of anyone else.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import grpc
from structlog.testing import capture_logs

from auth.api import AuthErrorCode
from context import context_pb2
from context.api import UserExecutionContext, new_request_id, new_run_id
from context.proto_codec import MAX_ENCODED_CONTEXT_BYTES, encode_context_metadata, to_proto
from itests.auth_context.platform import composition
from itests.auth_context.tokens import alg_none, resigned, tampered
from itests.auth_context.wire import (
    PROBES,
    READ_PROBES,
    Metadata,
    Outcome,
    WireDeployment,
    bearer,
    context_entry,
    open_wire_deployment,
)
from server.testing import TestAccount
from websocket.auth.testing import ShiftedTime

THEME = "context validation across auth boundaries"

__all__ = ["composition"]  # the fixture, imported for pytest

#: How often an oversized context is sent: each one must be refused the same way.
OVERSIZED_ATTEMPTS = 30


def own(account: TestAccount, ctx: UserExecutionContext | None = None) -> Metadata:
    """Legitimate metadata: the account's token and a context of its own."""
    return (
        bearer(account.access_token),
        context_entry(ctx or UserExecutionContext.from_request(account.user_id)),
    )


def assert_served(outcomes: dict[str, Outcome], account: TestAccount) -> None:
    """Every read probe succeeded, acting for ``account``."""
    for probe, outcome in outcomes.items():
        assert outcome.ok, (probe, outcome)
    usage = outcomes.get("llm.GetUsage")
    if usage is not None:
        assert usage.response.user_id == account.user_id


def assert_refused(
    outcomes: dict[str, Outcome],
    status: grpc.StatusCode,
    codes: set[str],
    *,
    never_mentioned: tuple[str, ...] = (),
) -> None:
    for probe, outcome in outcomes.items():
        assert outcome.status is status, (probe, outcome)
        assert outcome.error_code in codes, (probe, outcome)
        for secret in never_mentioned:
            assert secret not in outcome.details, (probe, outcome)


async def setup_users(
    deployment: WireDeployment,
) -> tuple[TestAccount, TestAccount, str]:
    """Alice and Bob; Bob keeps a note and has a finished run (its ID returned)."""
    alice, bob = await asyncio.gather(deployment.new_user("alice"), deployment.new_user("bob"))
    bob_caller = await deployment.platform.caller(bob.access_token)
    async with deployment.platform.data.create_user_context(bob_caller.context) as scope:
        await scope.notes.add("bob's private note")
    bob_run = await deployment.run_for(bob_caller, "what is 2+2?")
    return alice, bob, bob_run


async def assert_untouched(deployment: WireDeployment, bob: TestAccount, runs: int) -> None:
    """No probe stored anything, Bob's data is as before, no hostile run started."""
    assert await deployment.planted_notes(bob) == []
    ctx = UserExecutionContext.from_request(bob.user_id)
    async with deployment.platform.data.create_user_context(ctx) as scope:
        notes = [note.content for note in await scope.notes.list()]
    assert notes == ["bob's private note"]
    assert deployment.platform.internals.runner.stats().started == runs
    held = deployment.platform.leftovers()
    assert held == dict.fromkeys(held, 0), held


async def test_a_forged_context_naming_another_user_is_refused_with_permission_denied(
    composition: str, tmp_path: Path
) -> None:
    async with open_wire_deployment(composition, tmp_path) as deployment:
        alice, bob, bob_run = await setup_users(deployment)
        forged = UserExecutionContext.from_request(bob.user_id)
        # Forged with what Alice could know or guess of Bob: his ID, even his run's ID.
        forged_run = UserExecutionContext.from_request(bob.user_id, run_id=bob_run)
        with capture_logs() as logs:
            hostile, hostile_run, bob_served, alice_served = await asyncio.gather(
                deployment.call_all((bearer(alice.access_token), context_entry(forged))),
                deployment.call_all(
                    (bearer(alice.access_token), context_entry(forged_run)), run_id=bob_run
                ),
                deployment.call_all(own(bob), run_id=bob_run, probes=READ_PROBES),
                deployment.call_all(own(alice), probes=("data.ListNotes", "llm.GetUsage")),
            )
        for outcomes in (hostile, hostile_run):
            assert_refused(
                outcomes,
                grpc.StatusCode.PERMISSION_DENIED,
                {AuthErrorCode.CONTEXT_MISMATCH.value},
                never_mentioned=(bob.user_id, bob_run),
            )
        assert_served(bob_served, bob)
        assert [note.content for note in bob_served["data.ListNotes"].response.notes] == [
            "bob's private note"
        ]
        assert bob_served["agents.GetRun"].response.run_id == bob_run
        assert_served(alice_served, alice)
        assert list(alice_served["data.ListNotes"].response.notes) == []
        mismatches = [log for log in logs if log["event"] == "auth_context_user_mismatch"]
        assert len(mismatches) == 2 * len(PROBES)
        assert {log["token_subject"] for log in mismatches} == {alice.user_id}
        await assert_untouched(deployment, bob, runs=1)


async def test_a_context_replayed_into_another_users_call_is_refused(
    composition: str, tmp_path: Path
) -> None:
    async with open_wire_deployment(composition, tmp_path) as deployment:
        alice, bob, _ = await setup_users(deployment)
        # Alice's real request: the exact x-ssot-context value her client sends with it.
        alice_caller = await deployment.platform.caller(alice.access_token)
        alice_run = await deployment.run_for(alice_caller, "remember that alice likes tea")
        captured = encode_context_metadata(alice_caller.context)

        replayed, alice_again, bob_own, never_existed = await asyncio.gather(
            deployment.call_all(
                (bearer(bob.access_token), context_entry(captured)), run_id=alice_run
            ),
            deployment.call_all(
                (bearer(alice.access_token), context_entry(captured)),
                run_id=alice_run,
                probes=READ_PROBES,
            ),
            deployment.call(  # Bob, in his own context, asking for Alice's run
                "agents.GetRun", own(bob), run_id=alice_run
            ),
            deployment.call("agents.GetRun", own(bob), run_id=new_run_id()),
        )
        assert_refused(
            replayed,
            grpc.StatusCode.PERMISSION_DENIED,
            {AuthErrorCode.CONTEXT_MISMATCH.value},
            never_mentioned=(alice.user_id, alice_run, alice_caller.context.request_id),
        )
        # The context stays Alice's: replayed with her own token it is accepted.
        assert_served(alice_again, alice)
        assert alice_again["agents.GetRun"].response.run_id == alice_run
        assert [note.content for note in alice_again["data.ListNotes"].response.notes] == [
            "alice likes tea"
        ]
        # Bob learns nothing about Alice's run: it is "not found" like one never made.
        for outcome in (bob_own, never_existed):
            assert outcome.status is grpc.StatusCode.NOT_FOUND
            assert outcome.error_code == "RUN_NOT_FOUND"
        assert bob_own.details == never_existed.details
        assert alice.user_id not in bob_own.details
        assert await deployment.planted_notes(alice) == []
        await assert_untouched(deployment, bob, runs=2)


def _encoded(message: context_pb2.UserExecutionContext, extra: bytes = b"") -> str:
    data = message.SerializeToString(deterministic=True) + extra
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def malformed_contexts(account: TestAccount) -> dict[str, str]:
    """Context values that name ``account`` (or no one) but cannot be decoded."""
    valid = UserExecutionContext.from_request(account.user_id)
    too_deep = to_proto(valid)
    too_deep.operation_depth = valid.MAX_OPERATION_DEPTH + 1
    too_deep.parent_request_id = new_request_id()
    placeholder = to_proto(valid)
    placeholder.user_id = "test"
    unnamed = to_proto(valid)
    unnamed.ClearField("created_at")
    return {
        "not_base64url": "!!not-base64url!!",
        "padded": encode_context_metadata(valid) + "=",
        "standard_alphabet": encode_context_metadata(valid).replace("-", "+").replace("_", "/")
        + "+/",
        "not_protobuf": base64.urlsafe_b64encode(b"\xff\xfe\xfd\xfc").decode().rstrip("="),
        "unknown_field": _encoded(to_proto(valid), extra=b"\x78\x01"),
        "too_deep": _encoded(too_deep),
        "placeholder_user": _encoded(placeholder),
        "no_created_at": _encoded(unnamed),
        "oversized": "A" * (MAX_ENCODED_CONTEXT_BYTES + 1),
    }


async def test_a_malformed_or_oversized_context_is_refused_with_invalid_argument(
    composition: str, tmp_path: Path
) -> None:
    async with open_wire_deployment(composition, tmp_path) as deployment:
        alice, bob, bob_run = await setup_users(deployment)
        token = bearer(alice.access_token)
        cases: dict[str, Metadata] = {
            name: (token, context_entry(value)) for name, value in malformed_contexts(alice).items()
        }
        valid = UserExecutionContext.from_request(alice.user_id)
        cases["two_contexts"] = (token, context_entry(valid), context_entry(valid))

        async def hostile(name: str, metadata: Metadata) -> tuple[str, dict[str, Outcome]]:
            return name, await deployment.call_all(metadata, run_id=bob_run)

        async def oversized_again() -> list[Outcome]:
            metadata = cases["oversized"]
            return [
                await deployment.call("data.ListNotes", metadata) for _ in range(OVERSIZED_ATTEMPTS)
            ]

        async def all_hostile() -> list[tuple[str, dict[str, Outcome]]]:
            return list(await asyncio.gather(*(hostile(n, m) for n, m in cases.items())))

        refused, repeated, bob_served = await asyncio.gather(
            all_hostile(),
            oversized_again(),
            deployment.call_all(own(bob), run_id=bob_run, probes=READ_PROBES),
        )
        for name, outcomes in refused:
            sent = dict(cases[name]).get("x-ssot-context", "")
            assert_refused(
                outcomes,
                grpc.StatusCode.INVALID_ARGUMENT,
                {AuthErrorCode.INVALID_REQUEST.value},
                never_mentioned=(bob.user_id, bob_run, sent[:64]),
            )
        assert [(o.status, o.error_code) for o in repeated] == [
            (grpc.StatusCode.INVALID_ARGUMENT, AuthErrorCode.INVALID_REQUEST.value)
        ] * OVERSIZED_ATTEMPTS
        assert_served(bob_served, bob)
        assert await deployment.planted_notes(alice) == []
        await assert_untouched(deployment, bob, runs=1)


async def test_a_tampered_token_with_a_valid_context_is_refused_with_unauthenticated(
    composition: str, tmp_path: Path
) -> None:
    clock = ShiftedTime()
    async with open_wire_deployment(composition, tmp_path, auth_clock=clock) as deployment:
        clock.offset = -2 * 3600  # a token issued two hours ago: long expired
        expired = await deployment.new_user("expired")
        clock.offset = 0
        alice, bob, bob_run = await setup_users(deployment)
        bob_ctx = UserExecutionContext.from_request(bob.user_id)
        alice_ctx = UserExecutionContext.from_request(alice.user_id)
        as_bob = {"sub": bob.user_id}
        as_admin = {"plan": "enterprise", "roles": ["admin"]}
        cases: dict[str, tuple[str, UserExecutionContext, set[str]]] = {
            "tampered_to_bob": (
                tampered(alice.access_token, **as_bob),
                bob_ctx,
                {AuthErrorCode.BAD_SIGNATURE.value},
            ),
            "resigned_as_bob": (
                resigned(alice.access_token, **as_bob),
                bob_ctx,
                {AuthErrorCode.BAD_SIGNATURE.value},
            ),
            "unsigned_as_bob": (
                alg_none(alice.access_token, **as_bob),
                bob_ctx,
                {AuthErrorCode.INVALID_FORMAT.value},  # no signature: not a compact JWS
            ),
            "tampered_to_admin": (
                tampered(alice.access_token, **as_admin),
                alice_ctx,
                {AuthErrorCode.BAD_SIGNATURE.value},
            ),
            "expired": (
                expired.access_token,
                UserExecutionContext.from_request(expired.user_id),
                {AuthErrorCode.EXPIRED.value},
            ),
        }

        async def hostile(name: str) -> tuple[str, dict[str, Outcome]]:
            token, ctx, _ = cases[name]
            return name, await deployment.call_all(
                (bearer(token), context_entry(ctx)), run_id=bob_run
            )

        async def all_hostile() -> list[tuple[str, dict[str, Outcome]]]:
            return list(await asyncio.gather(*(hostile(name) for name in cases)))

        refused, bob_served, alice_served = await asyncio.gather(
            all_hostile(),
            deployment.call_all(own(bob, bob_ctx), run_id=bob_run, probes=READ_PROBES),
            deployment.call_all(own(alice, alice_ctx), probes=("llm.GetUsage",)),
        )
        for name, outcomes in refused:
            assert_refused(
                outcomes,
                grpc.StatusCode.UNAUTHENTICATED,
                cases[name][2],
                never_mentioned=(bob.user_id, bob_run, cases[name][0]),
            )
        assert_served(bob_served, bob)
        assert [note.content for note in bob_served["data.ListNotes"].response.notes] == [
            "bob's private note"
        ]
        assert_served(alice_served, alice)
        assert await deployment.planted_notes(alice, expired) == []
        await assert_untouched(deployment, bob, runs=1)


async def test_a_call_without_a_token_is_refused_whatever_context_it_carries(
    composition: str, tmp_path: Path
) -> None:
    async with open_wire_deployment(composition, tmp_path) as deployment:
        alice, bob, bob_run = await setup_users(deployment)
        alice_ctx = UserExecutionContext.from_request(alice.user_id)
        bob_ctx = UserExecutionContext.from_request(bob.user_id, run_id=bob_run)
        contexts: dict[str, Metadata] = {
            "no_context": (),
            "alices_context": (context_entry(alice_ctx),),
            "bobs_context": (context_entry(bob_ctx),),
            "malformed_context": (context_entry("!!not-a-context!!"),),
            "two_contexts": (context_entry(alice_ctx), context_entry(bob_ctx)),
        }
        # No credential at all, or an authorization entry that carries no token.
        authorizations: dict[str, Metadata] = {
            "no_authorization": (),
            "empty_bearer": (("authorization", "Bearer "),),
            "basic_scheme": (("authorization", "Basic YWxpY2U6cGFzc3dvcmQ="),),
            "scheme_only": (("authorization", "Bearer"),),
        }
        cases = {
            (auth_name, ctx_name): auth + ctx
            for auth_name, auth in authorizations.items()
            for ctx_name, ctx in contexts.items()
        }

        async def hostile(key: tuple[str, str]) -> tuple[tuple[str, str], dict[str, Outcome]]:
            return key, await deployment.call_all(cases[key], run_id=bob_run)

        async def all_hostile() -> list[tuple[tuple[str, str], dict[str, Outcome]]]:
            return list(await asyncio.gather(*(hostile(key) for key in cases)))

        refused, health, alice_served, bob_served = await asyncio.gather(
            all_hostile(),
            deployment.health(),
            deployment.call_all(own(alice, alice_ctx), probes=("data.ListNotes", "llm.GetUsage")),
            deployment.call_all(own(bob, bob_ctx), run_id=bob_run, probes=READ_PROBES),
        )
        for (auth_name, _), outcomes in refused:
            expected = (
                {AuthErrorCode.NO_TOKEN.value}
                if auth_name == "no_authorization"
                else {AuthErrorCode.INVALID_FORMAT.value, AuthErrorCode.NO_TOKEN.value}
            )
            assert_refused(
                outcomes,
                grpc.StatusCode.UNAUTHENTICATED,
                expected,
                never_mentioned=(alice.user_id, bob.user_id, bob_run),
            )
        assert health == 1  # SERVING: the server answers, it only refuses anonymous work
        assert_served(alice_served, alice)
        assert_served(bob_served, bob)
        assert bob_served["agents.GetRun"].response.run_id == bob_run
        assert await deployment.planted_notes(alice) == []
        await assert_untouched(deployment, bob, runs=1)
