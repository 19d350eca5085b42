"""``system.stats``: engine-wide totals for administrators (no per-user data at all)."""

from __future__ import annotations

from dispatch.engine.api import EngineStats, PermissionGroup, ToolAnnotations
from dispatch.engine.registry import Tool, ToolInput, ToolInvocation, define_tool

__all__ = ["SystemStatsInput", "system_stats_tool"]


class SystemStatsInput(ToolInput):
    """No arguments."""


async def _stats(invocation: ToolInvocation, args: SystemStatsInput) -> EngineStats:
    return invocation.engine_stats()


def system_stats_tool() -> Tool[SystemStatsInput]:
    return define_tool(
        name="system.stats",
        title="Engine statistics",
        description=(
            "Engine-wide totals: registered tools, calls by status and by tool, uptime and "
            "open data scopes. Contains no user's data. Enterprise administrators only."
        ),
        group=PermissionGroup.SYSTEM_MANAGEMENT,
        input_model=SystemStatsInput,
        output_model=EngineStats,
        handler=_stats,
        annotations=ToolAnnotations(
            read_only_hint=True,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=False,
        ),
        timeout_seconds=5.0,
    )
