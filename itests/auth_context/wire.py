"""The services' gRPC boundary, called with hand-made metadata.

``x-ssot-context`` and ``authorization`` exist only on the wire, so the scenarios that
attack them call the services with the generated stubs on a plain channel (no client
interceptor) and set both entries themselves, exactly as a hostile or broken client can.

Two compositions of that boundary (:func:`open_wire_deployment`):

* ``inprocess`` - the services' auth interceptor verifies tokens with the auth service
  of the same process (:func:`server.composition.serve_grpc`);
* ``grpc`` - the auth service runs behind its own gRPC server and the services' auth
  interceptor verifies every token with it over gRPC (:class:`auth.grpc_client.GrpcAuthClient`),
  as a split deployment does (``--role dispatch --auth-address ...``).

Each :data:`PROBES` entry is one method of one service (data, tools, LLM, agents); a
scenario sends the same metadata to all of them and compares the outcomes.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth.grpc_client import GrpcAuthClient
from auth.interceptors import AUTHORIZATION_METADATA_KEY
from context.api import UserExecutionContext
from context.proto_codec import CONTEXT_METADATA_KEY, encode_context_metadata
from data import data_pb2, data_pb2_grpc
from dispatch.agents import agents_pb2, agents_pb2_grpc
from dispatch.engine import engine_pb2, engine_pb2_grpc
from dispatch.engine.api import ToolCaller
from dispatch.llm import llm_pb2, llm_pb2_grpc
from itests.auth_context.platform import (
    PASSWORD,
    PATIENT_AUTH_CLIENT,
    assert_no_stray_tasks,
    assert_platform_shut_down,
    build_test_platform,
)
from server.composition import GrpcHost, Platform, serve_grpc, serve_services
from server.testing import TestAccount

__all__ = [
    "PLANTED",
    "PROBES",
    "READ_PROBES",
    "Metadata",
    "Outcome",
    "WireDeployment",
    "bearer",
    "context_entry",
    "open_wire_deployment",
]

Metadata = tuple[tuple[str, str], ...]
#: What every probe that writes puts into a note: nothing of it may ever be stored.
PLANTED = "planted through the wire"
_TIMEOUT = 20.0


def bearer(token: str) -> tuple[str, str]:
    return (AUTHORIZATION_METADATA_KEY, f"Bearer {token}")


def context_entry(ctx: UserExecutionContext | str) -> tuple[str, str]:
    value = ctx if isinstance(ctx, str) else encode_context_metadata(ctx)
    return (CONTEXT_METADATA_KEY, value)


@dataclass(frozen=True)
class Outcome:
    """How one call ended: its status, the ``x-ssot-error-code`` and details, and on
    success the response (for a run stream: its events)."""

    status: grpc.StatusCode
    error_code: str | None = None
    details: str = ""
    response: Any = None

    @property
    def ok(self) -> bool:
        return self.status is grpc.StatusCode.OK


def _error_code(trailing: Any) -> str | None:
    for key, value in trailing or ():
        if key == "x-ssot-error-code" and isinstance(value, str):
            return value
    return None


Probe = Callable[[grpc.aio.Channel, Metadata, str], Awaitable[Any]]


async def _list_notes(channel: grpc.aio.Channel, metadata: Metadata, run_id: str) -> Any:
    stub = data_pb2_grpc.DataAccessStub(channel)
    return await stub.ListNotes(data_pb2.ListNotesRequest(), metadata=metadata, timeout=_TIMEOUT)


async def _add_note(channel: grpc.aio.Channel, metadata: Metadata, run_id: str) -> Any:
    stub = data_pb2_grpc.DataAccessStub(channel)
    request = data_pb2.AddNoteRequest(content=PLANTED)
    return await stub.AddNote(request, metadata=metadata, timeout=_TIMEOUT)


async def _execute_tool(channel: grpc.aio.Channel, metadata: Metadata, run_id: str) -> Any:
    stub = engine_pb2_grpc.ToolServiceStub(channel)
    request = engine_pb2.ExecuteToolRequest(
        tool_name="notes.add", arguments_json=json.dumps({"content": PLANTED})
    )
    return await stub.ExecuteTool(request, metadata=metadata, timeout=_TIMEOUT)


async def _usage(channel: grpc.aio.Channel, metadata: Metadata, run_id: str) -> Any:
    stub = llm_pb2_grpc.LLMServiceStub(channel)
    return await stub.GetUsage(llm_pb2.GetUsageRequest(), metadata=metadata, timeout=_TIMEOUT)


async def _get_run(channel: grpc.aio.Channel, metadata: Metadata, run_id: str) -> Any:
    stub = agents_pb2_grpc.AgentServiceStub(channel)
    request = agents_pb2.GetRunRequest(run_id=run_id)
    return await stub.GetRun(request, metadata=metadata, timeout=_TIMEOUT)


async def _start_run(channel: grpc.aio.Channel, metadata: Metadata, run_id: str) -> Any:
    stub = agents_pb2_grpc.AgentServiceStub(channel)
    request = agents_pb2.StartRunRequest(agent_name="assistant", message=f"remember that {PLANTED}")
    call = stub.StartRun(request, metadata=metadata, timeout=_TIMEOUT)
    return [event async for event in call]


#: One method of each service; every one needs a verified caller.
PROBES: dict[str, Probe] = {
    "data.ListNotes": _list_notes,
    "data.AddNote": _add_note,
    "tools.ExecuteTool": _execute_tool,
    "llm.GetUsage": _usage,
    "agents.GetRun": _get_run,
    "agents.StartRun": _start_run,
}
#: The probes that only read (safe to send with legitimate metadata too).
READ_PROBES = ("data.ListNotes", "llm.GetUsage", "agents.GetRun")


@dataclass(eq=False)
class WireDeployment:
    """The platform with its services behind gRPC; see the module docstring."""

    composition: str
    platform: Platform
    services: GrpcHost
    channel: grpc.aio.Channel
    auth_host: GrpcHost | None = None
    verifier: GrpcAuthClient | None = None
    _closed: bool = field(default=False, repr=False)

    async def new_user(self, name: str) -> TestAccount:
        """A registered, logged-in account (through the in-process auth service: this is
        setup, not what the scenario tests)."""
        auth = self.platform.auth
        email = f"{name}-{secrets.token_hex(4)}@example.com"
        account = await auth.register(email, PASSWORD)
        pair = await auth.login(email, PASSWORD)
        return TestAccount(
            user_id=account.user_id,
            email=email,
            password=PASSWORD,
            access_token=pair.access_token,
        )

    async def call(self, probe: str, metadata: Metadata, *, run_id: str = "") -> Outcome:
        try:
            response = await PROBES[probe](self.channel, metadata, run_id)
        except grpc.aio.AioRpcError as error:
            return Outcome(
                status=error.code(),
                error_code=_error_code(error.trailing_metadata()),
                details=error.details() or "",
            )
        return Outcome(status=grpc.StatusCode.OK, response=response)

    async def call_all(
        self, metadata: Metadata, *, run_id: str = "", probes: Sequence[str] = tuple(PROBES)
    ) -> dict[str, Outcome]:
        """Every probe with the same metadata, concurrently."""
        outcomes = await asyncio.gather(
            *(self.call(probe, metadata, run_id=run_id) for probe in probes)
        )
        return dict(zip(probes, outcomes, strict=True))

    async def health(self) -> int:
        """The services' overall health status, asked without any credential."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=_TIMEOUT)
        return int(answer.status)

    async def run_for(self, caller: ToolCaller, message: str) -> str:
        """A completed run of ``caller`` (started in process); its ID."""
        runner = self.platform.internals.runner
        handle = await runner.start_run(caller, "assistant", message)
        info = await runner.wait_run(caller, handle.run_id)
        assert info.state.value == "completed"
        return handle.run_id

    async def planted_notes(self, *accounts: TestAccount) -> list[str]:
        """Notes of these users that came from a probe (there must be none)."""
        found: list[str] = []
        for account in accounts:
            ctx = UserExecutionContext.from_request(account.user_id)
            async with self.platform.data.create_user_context(ctx) as scope:
                notes = await scope.notes.list(limit=500)
            found += [note.content for note in notes if PLANTED in note.content]
        return found

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.channel.close()
        await self.services.stop()
        if self.verifier is not None:
            await self.verifier.close()
        if self.auth_host is not None:
            await self.auth_host.stop()
        await self.platform.aclose(grace_seconds=5.0)


@asynccontextmanager
async def open_wire_deployment(
    composition: str, data_dir: Path, **platform_kwargs: Any
) -> AsyncIterator[WireDeployment]:
    """The platform's services behind gRPC in ``composition`` (see the module
    docstring); shut down and checked for leftovers on a normal exit."""
    before = asyncio.all_tasks()
    platform = await build_test_platform(data_dir, **platform_kwargs)
    auth_host: GrpcHost | None = None
    verifier: GrpcAuthClient | None = None
    try:
        if composition == "inprocess":
            services = await serve_grpc(platform)
        elif composition == "grpc":
            internals = platform.internals
            auth_host = await serve_services(token_auth=platform.token_auth, auth=internals.auth)
            verifier = GrpcAuthClient(auth_host.address, policy=PATIENT_AUTH_CLIENT)
            services = await serve_services(
                token_auth=verifier,
                data=internals.data,
                engine=internals.engine,
                llm=internals.llm,
                runner=internals.runner,
            )
        else:
            raise ValueError(f"unknown composition {composition!r}")
    except BaseException:
        if verifier is not None:
            await verifier.close()
        if auth_host is not None:
            await auth_host.stop()
        await platform.aclose(grace_seconds=5.0)
        raise
    deployment = WireDeployment(
        composition=composition,
        platform=platform,
        services=services,
        channel=grpc.aio.insecure_channel(services.address),
        auth_host=auth_host,
        verifier=verifier,
    )
    try:
        yield deployment
    except BaseException:
        await deployment._close()
        raise
    await deployment._close()
    assert_platform_shut_down(platform)
    await assert_no_stray_tasks(before)
