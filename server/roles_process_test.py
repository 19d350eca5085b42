"""Acceptance 6: auth, dispatch and gateway as three processes pass the demo flow.

``--role auth`` serves the AuthService; ``--role dispatch`` (data, tools, LLM, agents)
verifies tokens through the auth process and authenticates itself with a service token;
``--role gateway`` serves WebSockets, verifies tokens through auth and runs agents on the
dispatch process. The demo client talks to auth (gRPC) and the gateway (WebSocket) only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from context.api import UserExecutionContext, context_scope
from data.api import DataError
from server.composition import connect_grpc
from server.demo_process_test import assert_flow
from server.testing import ServerProcess, new_account, run_client


def test_demo_across_auth_dispatch_and_gateway_processes(tmp_path: Path) -> None:
    auth = ServerProcess(
        ["--role", "auth", "--grpc-port", "0", "--data-dir", str(tmp_path / "auth")],
        log_path=tmp_path / "auth.log",
    )
    with auth:
        assert auth.ws == "-"
        dispatch = ServerProcess(
            [
                "--role", "dispatch",
                "--grpc-port", "0",
                "--data-dir", str(tmp_path / "dispatch"),
                "--auth-address", auth.grpc,
            ],
            log_path=tmp_path / "dispatch.log",
        )  # fmt: skip
        with dispatch:
            assert dispatch.ws == "-"
            gateway = ServerProcess(
                [
                    "--role", "gateway",
                    "--ws-port", "0",
                    "--data-dir", str(tmp_path / "gateway"),
                    "--auth-address", auth.grpc,
                    "--dispatch-address", dispatch.grpc,
                ],
                log_path=tmp_path / "gateway.log",
            )  # fmt: skip
            with gateway:
                assert gateway.grpc == "-"
                result = run_client(["--grpc", auth.grpc, "--ws", gateway.ws, "demo"])
                logs = auth.log() + dispatch.log() + gateway.log()
                assert result.returncode == 0, result.stdout + result.stderr + logs
                assert_flow(result.stdout)
            assert gateway.stop() == 0
        assert dispatch.stop() == 0
        # The run happened in the dispatch process, the data is there.
        assert (tmp_path / "dispatch" / "data.db").exists()
        assert not (tmp_path / "gateway" / "data.db").exists()
        assert '"event": "tool_call_finished"' in dispatch.log()
        assert '"service_identity": true' in dispatch.log()
    assert auth.stop() == 0


async def test_data_role_serves_the_users_data_with_tokens_from_auth(tmp_path: Path) -> None:
    auth = ServerProcess(
        ["--role", "auth", "--grpc-port", "0", "--data-dir", str(tmp_path / "auth")],
        log_path=tmp_path / "auth.log",
    )
    with auth:
        data = ServerProcess(
            [
                "--role", "data",
                "--grpc-port", "0",
                "--data-dir", str(tmp_path / "data"),
                "--auth-address", auth.grpc,
            ],
            log_path=tmp_path / "data.log",
        )  # fmt: skip
        with data:
            anonymous = await connect_grpc(auth.grpc)
            try:
                alice = await new_account(anonymous.auth, "alice")
                bob = await new_account(anonymous.auth, "bob")
            finally:
                await anonymous.aclose()
            titles: dict[str, list[str]] = {}
            for account in (alice, bob):
                remote = await connect_grpc(data.grpc, access_token=account.access_token)
                try:
                    ctx = UserExecutionContext.from_request(account.user_id)
                    with context_scope(ctx):
                        async with remote.data.create_user_context(ctx) as scope:
                            await scope.threads.create(title=f"plans of {account.email}")
                            titles[account.user_id] = [t.title for t in await scope.threads.list()]
                finally:
                    await remote.aclose()
            assert titles == {
                alice.user_id: [f"plans of {alice.email}"],
                bob.user_id: [f"plans of {bob.email}"],
            }
            # No token, no data.
            anonymous = await connect_grpc(data.grpc)
            try:
                ctx = UserExecutionContext.from_request(alice.user_id)
                with pytest.raises(DataError), context_scope(ctx):
                    async with anonymous.data.create_user_context(ctx) as scope:
                        await scope.threads.list()
            finally:
                await anonymous.aclose()
        assert data.stop() == 0
    assert auth.stop() == 0
