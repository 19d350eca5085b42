"""``AgentRuns``: what the gateway needs from the agent service, and nothing more.

The gateway sits below the agent service in the layering, so it names the operations it
needs as a Protocol and the composition root wires an implementation to it (in process,
or over gRPC). The gateway builds each run's :class:`UserExecutionContext` itself, from
the connection's verified user and a new run ID, so the run's identity never comes from
the client; the implementation must run under exactly that context (``ctx.run_id``,
``ctx.thread_id``) and emit its events through an emitter made for it.

Ownership is the implementation's job: ``cancel`` of a run that is not ``ctx.user_id``'s
must behave exactly like a run that does not exist (return ``False``), so nothing is
revealed about other users' runs.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from context.api import UserExecutionContext

__all__ = ["AgentRuns", "RunAccepted"]


class RunAccepted(BaseModel):
    """A run the agent service accepted; it proceeds in the background."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    thread_id: str


@runtime_checkable
class AgentRuns(Protocol):
    """Starts and cancels agent runs for the gateway's users."""

    async def start(
        self, ctx: UserExecutionContext, *, agent_name: str, message: str
    ) -> RunAccepted:
        """Accept a run of ``agent_name`` on ``message`` under ``ctx`` and return at once.

        The run's events (``agent_started`` first) are emitted for ``ctx`` while it runs.
        Raises :class:`~websocket.gateway.api.RunRejectedError` (client-safe message) when
        the run is refused, :class:`~websocket.gateway.api.ServiceUnavailableError` when
        the agent service cannot be reached.
        """
        ...

    async def cancel(self, ctx: UserExecutionContext, run_id: str) -> bool:
        """Cancel ``run_id`` if it is a running run of ``ctx.user_id``.

        Returns ``False`` for an unknown, finished or other user's run.
        """
        ...

    async def wait_idle(self, grace_seconds: float) -> bool:
        """Wait up to ``grace_seconds`` for the runs started here to finish.

        Returns whether none is still running. Used by graceful shutdown.
        """
        ...
