"""Real WebSocket clients of the gateway, with every way of presenting a credential.

:func:`admit` opens a connection that must be accepted and returns a
:class:`server.testing.WsClient`; :func:`refuse` opens one that must be refused and returns
what the server said and how it closed. Both use the real ``websockets`` client against
the real gateway on 127.0.0.1, presenting the token in the ``Authorization`` header, in
the ``jwt-auth`` + ``jwt.<base64url>`` subprotocols, or (refused by design) in the query
string.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from context.api import UserExecutionContext
from server.testing import WsClient
from websocket.auth.api import AUTH_SUBPROTOCOL
from websocket.auth.credentials import encode_token_subprotocol
from websocket.emitter.api import EmitterFactory, EmitterStats

__all__ = ["Refusal", "admit", "emit_progress", "frames_of", "receive", "refuse"]

_RECV_SECONDS = 20.0


@dataclass(frozen=True)
class Refusal:
    """A refused handshake: the ``authentication_error`` frame and the close code."""

    frame: dict[str, Any]
    close_code: int | None
    raw: str

    @property
    def error_code(self) -> str:
        return str(self.frame.get("error_code"))


async def _open(
    url: str,
    *,
    header_token: str | None = None,
    subprotocol_token: str | None = None,
    subprotocol_value: str | None = None,
    query: str = "",
) -> tuple[ClientConnection, str]:
    headers: list[tuple[str, str]] = []
    if header_token is not None:
        headers.append(("Authorization", f"Bearer {header_token}"))
    offered: list[Subprotocol] = []
    if subprotocol_token is not None:
        offered.append(Subprotocol(encode_token_subprotocol(subprotocol_token)))
    if subprotocol_value is not None:
        offered.append(Subprotocol(subprotocol_value))
    if offered:
        offered.insert(0, Subprotocol(AUTH_SUBPROTOCOL))
    ws = await connect(url + query, additional_headers=headers, subprotocols=offered or None)
    try:
        first = await asyncio.wait_for(ws.recv(), _RECV_SECONDS)
    except BaseException:
        await ws.close()
        raise
    return ws, first if isinstance(first, str) else first.decode()


async def admit(
    url: str,
    *,
    header_token: str | None = None,
    subprotocol_token: str | None = None,
    query: str = "",
) -> WsClient:
    """A connection the gateway must accept (``authentication_success`` first)."""
    ws, first = await _open(
        url, header_token=header_token, subprotocol_token=subprotocol_token, query=query
    )
    welcome = json.loads(first)
    if welcome.get("type") != "authentication_success":
        await ws.close()
        raise AssertionError(f"not admitted: {welcome}")
    return WsClient(ws, welcome)


async def refuse(
    url: str,
    *,
    header_token: str | None = None,
    subprotocol_token: str | None = None,
    subprotocol_value: str | None = None,
    query: str = "",
) -> Refusal:
    """A connection the gateway must refuse: its error frame, then the server's close."""
    ws, first = await _open(
        url,
        header_token=header_token,
        subprotocol_token=subprotocol_token,
        subprotocol_value=subprotocol_value,
        query=query,
    )
    try:
        frame = json.loads(first)
        if frame.get("type") != "authentication_error":
            raise AssertionError(f"admitted, expected a refusal: {frame}")
        try:
            extra = await asyncio.wait_for(ws.recv(), _RECV_SECONDS)
        except ConnectionClosed:
            pass
        else:
            raise AssertionError(f"a frame after the refusal: {extra!r}")
    finally:
        await ws.close()
    return Refusal(frame=frame, close_code=ws.close_code, raw=first)


async def receive(client: WsClient, count: int) -> list[dict[str, Any]]:
    """The next ``count`` frames of ``client``."""
    return [await client.recv() for _ in range(count)]


async def emit_progress(
    emitters: EmitterFactory, user_id: str, count: int, *, label: str
) -> tuple[UserExecutionContext, EmitterStats]:
    """``count`` progress events of a new run of ``user_id`` through the gateway's
    emitters (numbered, kept for replay, routed); the run's context and emitter stats."""
    ctx = UserExecutionContext.from_request(user_id)
    emitter = emitters.create_emitter(ctx)
    try:
        for index in range(count):
            accepted = await emitter.notify_progress_update(
                "router_probe", 100.0 * (index + 1) / count, f"{label} step {index + 1}"
            )
            assert accepted
        return ctx, emitter.stats()
    finally:
        await emitter.close()


def frames_of(frames: Sequence[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame.get("run_id") == run_id]
