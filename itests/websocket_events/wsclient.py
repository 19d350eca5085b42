"""A real ``websockets`` client of the gateway protocol that keeps every frame it received.

Scenarios in this category check what reached a connection, and also what did not: every
frame a :class:`ProtocolClient` receives is kept in :attr:`ProtocolClient.frames`, so after
the concurrent part of a scenario :func:`assert_never_mentioned` can check that no frame of
one user's connections names anything of another user (user ID, email, token, run and
thread IDs, the texts the other user sent).

A reader task receives frames as they arrive; scenario code claims them by predicate
(:meth:`ProtocolClient.next`). Frames nobody has claimed yet wait, in order, for the next
reader, so several tasks can follow different runs of one connection at the same time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

__all__ = [
    "RECV_TIMEOUT",
    "TERMINAL_EVENTS",
    "ConnectionEndedError",
    "Frame",
    "ProtocolClient",
    "assert_complete_run",
    "assert_never_mentioned",
    "connect_with_token",
    "event_types",
    "slow_socket",
]

#: How long a scenario waits for one frame before it fails (generous for loaded machines).
RECV_TIMEOUT = 20.0
TERMINAL_EVENTS = frozenset({"agent_completed", "agent_error"})

Frame = dict[str, Any]
Predicate = Callable[[Frame], bool]


class ConnectionEndedError(AssertionError):
    """The connection closed while a scenario was still waiting for a frame."""


def _is_event_of(run_id: str) -> Predicate:
    return lambda frame: frame.get("run_id") == run_id and "seq" in frame


class ProtocolClient:
    """One authenticated connection to the gateway (see the module docstring)."""

    def __init__(self, ws: ClientConnection, welcome: Frame, *, label: str) -> None:
        self.ws = ws
        self.welcome = welcome
        self.label = label
        #: Every frame received on this connection, in arrival order (the welcome first).
        self.frames: list[Frame] = [welcome]
        self._unclaimed: list[Frame] = []
        self._arrived = asyncio.Condition()
        self._ended = False
        self._reader = asyncio.create_task(self._read(), name=f"ws-client:{label}")

    @classmethod
    async def open(
        cls, url: str, token: str, *, label: str = "client", via: str = "header", **options: Any
    ) -> ProtocolClient:
        """Connect with ``token`` (``Authorization`` header, or ``via="subprotocol"``) and
        read ``authentication_success``; anything else fails the scenario."""
        ws = await connect_with_token(url, token, via=via, **options)
        welcome: Frame = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT))
        if welcome.get("type") != "authentication_success":
            await ws.close()
            raise AssertionError(f"{label} was not admitted: {welcome}")
        return cls(ws, welcome, label=label)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame: Frame = json.loads(raw)
                async with self._arrived:
                    self.frames.append(frame)
                    self._unclaimed.append(frame)
                    self._arrived.notify_all()
        except ConnectionClosed:
            pass
        finally:
            async with self._arrived:
                self._ended = True
                self._arrived.notify_all()

    # -- identity --------------------------------------------------------------------------

    @property
    def user_id(self) -> str:
        return str(self.welcome["user_id"])

    @property
    def connection_id(self) -> str:
        return str(self.welcome["connection_id"])

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    # -- sending ---------------------------------------------------------------------------

    async def send(self, message: Mapping[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def send_text(self, text: str) -> None:
        await self.ws.send(text)

    # -- receiving -------------------------------------------------------------------------

    async def next(self, predicate: Predicate | None = None) -> Frame:
        """The first unclaimed frame matching ``predicate`` (any frame if None), waiting
        for it if need be; frames that do not match stay for other readers, in order."""
        async with asyncio.timeout(RECV_TIMEOUT), self._arrived:
            while True:
                for index, frame in enumerate(self._unclaimed):
                    if predicate is None or predicate(frame):
                        return self._unclaimed.pop(index)
                if self._ended:
                    raise ConnectionEndedError(
                        f"{self.label} closed ({self.ws.close_code}) while waiting; "
                        f"unclaimed: {self._unclaimed}"
                    )
                await self._arrived.wait()

    async def next_of_type(self, *types: str) -> Frame:
        return await self.next(lambda frame: frame.get("type") in types)

    async def start(self, agent: str, message: str, **fields: Any) -> Frame:
        """``start_agent``; the ``run_accepted`` reply (an ``error`` reply fails)."""
        await self.send({"type": "start_agent", "agent": agent, "message": message, **fields})
        reply = await self.next_of_type("run_accepted", "error")
        if reply["type"] != "run_accepted":
            raise AssertionError(f"{self.label}: start_agent refused: {reply}")
        return reply

    async def request_error(self, message: Mapping[str, Any]) -> Frame:
        """Send ``message``; the ``error`` frame it must be answered with."""
        await self.send(message)
        reply = await self.next_of_type("error", "run_accepted")
        if reply["type"] != "error":
            raise AssertionError(f"{self.label}: expected an error frame, got {reply}")
        return reply

    async def events_of(self, run_id: str, *, until: Predicate | None = None) -> list[Frame]:
        """The run's events in arrival order, up to its terminal event (or up to the first
        event matching ``until``)."""
        stop = until or (lambda frame: frame["type"] in TERMINAL_EVENTS)
        events: list[Frame] = []
        while True:
            events.append(await self.next(_is_event_of(run_id)))
            if stop(events[-1]):
                return events

    async def take(self, run_id: str, count: int) -> list[Frame]:
        """The next ``count`` events of the run, in arrival order."""
        return [await self.next(_is_event_of(run_id)) for _ in range(count)]

    async def assert_quiet(self) -> None:
        """Nothing unread: no frame is waiting unclaimed, and a ``ping`` is answered by the
        very next frame, ``pong``."""
        assert self._unclaimed == [], f"{self.label}: unread frames {self._unclaimed}"
        await self.send({"type": "ping"})
        reply = await self.next()
        assert reply == {"type": "pong"}, f"{self.label}: expected pong, got {reply}"

    async def closed_by_server(self) -> tuple[int | None, list[Frame]]:
        """Wait until the connection is closed; the close code and the frames that were
        still unclaimed."""
        async with asyncio.timeout(RECV_TIMEOUT):
            await asyncio.shield(self._reader)
        unclaimed, self._unclaimed = self._unclaimed, []
        return self.ws.close_code, unclaimed

    async def close(self) -> None:
        await self.ws.close()
        await self._reader

    def drop(self) -> None:
        """Cut the TCP connection without a closing handshake, like a network failure."""
        transport = self.ws.transport
        assert transport is not None
        transport.abort()


async def connect_with_token(
    url: str, token: str, *, via: str = "header", **options: Any
) -> ClientConnection:
    """A ``websockets`` connection presenting ``token`` in the ``Authorization`` header or
    (``via="subprotocol"``) as the ``jwt-auth`` + ``jwt.<base64url>`` subprotocols."""
    if via == "header":
        options.setdefault("additional_headers", [("Authorization", f"Bearer {token}")])
    elif via == "subprotocol":
        encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
        options.setdefault("subprotocols", [Subprotocol("jwt-auth"), Subprotocol(f"jwt.{encoded}")])
    else:
        raise ValueError(f"unknown token transport {via!r}")
    options.setdefault("open_timeout", RECV_TIMEOUT)
    return await connect(url, **options)


async def slow_socket(address: tuple[str, int], receive_buffer: int = 4096) -> socket.socket:
    """A TCP socket connected to ``address`` with a tiny receive buffer: a client on it
    that stops reading makes the server's writes block after a few megabytes at most."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


def event_types(events: Sequence[Frame]) -> list[str]:
    return [str(event["type"]) for event in events]


def assert_complete_run(
    events: Sequence[Frame], run_id: str, *, end: str = "agent_completed"
) -> None:
    """One run's events as a client must see them: its own run ID only, one thread,
    ``seq`` 1..n without gaps or repeats, ``agent_started`` first, exactly one terminal
    event, ``end``, last, and every ``tool_executing`` answered by one ``tool_completed``
    of the same tool before the next."""
    assert events, f"no events of {run_id}"
    assert {event["run_id"] for event in events} == {run_id}
    seqs = [event["seq"] for event in events]
    assert seqs == list(range(1, len(events) + 1)), seqs
    assert len({event["thread_id"] for event in events}) == 1
    assert events[0]["type"] == "agent_started"
    assert events[-1]["type"] == end, events[-1]
    assert sum(1 for event in events if event["type"] in TERMINAL_EVENTS) == 1
    open_tool: str | None = None
    for event in events:
        if event["type"] == "tool_executing":
            assert open_tool is None, f"tool_executing while {open_tool} is still open"
            open_tool = event["payload"]["tool_name"]
        elif event["type"] == "tool_completed":
            assert open_tool == event["payload"]["tool_name"], event
            open_tool = None
    assert open_tool is None, f"{open_tool} never completed"


def assert_never_mentioned(
    clients: Iterable[ProtocolClient], forbidden: Iterable[str], *, whose: str = "another user"
) -> None:
    """No frame any of ``clients`` received contains any of the ``forbidden`` strings."""
    needles = [needle for needle in forbidden if needle]
    assert needles, "nothing to look for"
    for client in clients:
        assert len(client.frames) > 1, f"{client.label} received nothing to check"
        for frame in client.frames:
            text = json.dumps(frame, ensure_ascii=False)
            leaked = [needle for needle in needles if needle in text]
            assert not leaked, f"{client.label} received {whose}'s {leaked}: {text[:300]}"
