"""Test doubles for the router: an in-memory :class:`~websocket.router.api.Connection`.

For tests of this and other packages that need live connections without sockets.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from context import IDKind, new_id

__all__ = ["RecordingConnection"]


@dataclass(eq=False)
class RecordingConnection:
    """Records every frame sent to it and how it was closed.

    ``stuck=True`` makes every ``send`` wait until :meth:`unstick` (a socket whose peer
    stopped reading). ``fail_sends=True`` makes ``send`` raise ``ConnectionError``.
    ``hang_on_close=True`` makes ``close`` never return (it records the code first).
    ``send_started`` is set when a send begins, ``sent_event`` on every frame sent,
    ``closed_event`` when closed.
    """

    user_id: str
    connection_id: str = field(default_factory=lambda: new_id(IDKind.CONNECTION))
    stuck: bool = False
    fail_sends: bool = False
    hang_on_close: bool = False
    frames: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    sends_started: int = 0
    sends_cancelled: int = 0
    sent_event: asyncio.Event = field(default_factory=asyncio.Event)
    send_started: asyncio.Event = field(default_factory=asyncio.Event)
    closed_event: asyncio.Event = field(default_factory=asyncio.Event)
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, text: str) -> None:
        self.sends_started += 1
        self.send_started.set()
        if self.fail_sends:
            raise ConnectionError("peer went away")
        if self.stuck:
            try:
                await self._release.wait()
            except asyncio.CancelledError:
                self.sends_cancelled += 1
                raise
        self.frames.append(text)
        self.sent_event.set()

    async def close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self.closed_event.set()
        if self.hang_on_close:
            await asyncio.Event().wait()

    def unstick(self) -> None:
        self.stuck = False
        self._release.set()

    def messages(self) -> list[dict[str, Any]]:
        """The frames, parsed as JSON objects."""
        return [json.loads(frame) for frame in self.frames]

    async def wait_for_frames(self, count: int) -> list[dict[str, Any]]:
        """Wait until at least ``count`` frames arrived; return them parsed."""
        while len(self.frames) < count:
            self.sent_event.clear()
            if len(self.frames) >= count:
                break
            await self.sent_event.wait()
        return self.messages()
