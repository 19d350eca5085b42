"""The built-in tools. Each works only on the caller's own data (or on no data at all).

``builtin_tools()`` returns fresh :class:`~dispatch.engine.registry.Tool` objects;
``register_builtin_tools(registry)`` registers all of them.
"""

from __future__ import annotations

from typing import Any

from dispatch.engine.builtin_tools.calculator import calculator_tool
from dispatch.engine.builtin_tools.clock import time_now_tool
from dispatch.engine.builtin_tools.history import runs_list_tool, threads_list_tool
from dispatch.engine.builtin_tools.notes import (
    notes_add_tool,
    notes_delete_tool,
    notes_search_tool,
)
from dispatch.engine.builtin_tools.system_stats import system_stats_tool
from dispatch.engine.registry import Tool, ToolRegistry

__all__ = [
    "BUILTIN_TOOL_NAMES",
    "builtin_tools",
    "calculator_tool",
    "notes_add_tool",
    "notes_delete_tool",
    "notes_search_tool",
    "register_builtin_tools",
    "runs_list_tool",
    "system_stats_tool",
    "threads_list_tool",
    "time_now_tool",
]

BUILTIN_TOOL_NAMES: tuple[str, ...] = (
    "calculator",
    "notes.add",
    "notes.delete",
    "notes.search",
    "runs.list",
    "system.stats",
    "threads.list",
    "time.now",
)


def builtin_tools() -> tuple[Tool[Any], ...]:
    """A fresh instance of every built-in tool."""
    return (
        calculator_tool(),
        notes_add_tool(),
        notes_delete_tool(),
        notes_search_tool(),
        runs_list_tool(),
        system_stats_tool(),
        threads_list_tool(),
        time_now_tool(),
    )


def register_builtin_tools(registry: ToolRegistry) -> ToolRegistry:
    """Register every built-in tool in ``registry`` and return it."""
    registry.register_all(builtin_tools())
    return registry
