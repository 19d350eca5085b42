"""The registry refuses misuse; definitions are generated from the input models."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field

from dispatch.engine.api import (
    DuplicateToolError,
    InvalidToolDefinitionError,
    MissingToolGroupError,
    PermissionGroup,
    ToolAnnotations,
    UnknownToolGroupError,
)
from dispatch.engine.builtin_tools import BUILTIN_TOOL_NAMES, builtin_tools
from dispatch.engine.builtin_tools.notes import AddNoteInput
from dispatch.engine.registry import Tool, ToolInput, ToolInvocation, ToolRegistry, define_tool


class EchoInput(ToolInput):
    text: str = Field(max_length=10)


async def _echo(invocation: ToolInvocation, args: EchoInput) -> str:
    return args.text


def _echo_tool(
    name: str = "echo", group: PermissionGroup | str | None = PermissionGroup.BASIC
) -> Tool[EchoInput]:
    return define_tool(
        name=name,
        title="Echo",
        description="Returns its input.",
        group=group,
        input_model=EchoInput,
        handler=_echo,
    )


def test_register_and_look_up() -> None:
    registry = ToolRegistry()
    registered = registry.register(_echo_tool())
    assert registry.get("echo") is registered
    assert registered.group is PermissionGroup.BASIC
    assert "echo" in registry
    assert registry.get("other") is None


def test_registering_a_duplicate_name_raises() -> None:
    registry = ToolRegistry()
    registry.register(_echo_tool())
    with pytest.raises(DuplicateToolError) as caught:
        registry.register(_echo_tool())
    assert caught.value.error_code == "DUPLICATE_TOOL"
    assert caught.value.grpc_status_name == "ALREADY_EXISTS"


def test_registering_a_tool_without_group_raises() -> None:
    with pytest.raises(MissingToolGroupError) as caught:
        ToolRegistry().register(_echo_tool(group=None))
    assert caught.value.error_code == "TOOL_GROUP_MISSING"


def test_registering_a_tool_with_an_unknown_group_raises() -> None:
    registry = ToolRegistry()
    with pytest.raises(UnknownToolGroupError):
        registry.register(_echo_tool(group="superuser"))
    assert len(registry) == 0


@pytest.mark.parametrize("name", ["", "Echo", "echo tool", "echo..x", "1echo", "a" * 65, "é"])
def test_bad_tool_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidToolDefinitionError):
        _echo_tool(name=name)


def test_input_model_that_ignores_unknown_fields_is_refused() -> None:
    class LaxInput(BaseModel):
        model_config = ConfigDict(extra="ignore")
        text: str

    async def handler(invocation: ToolInvocation, args: LaxInput) -> str:
        return args.text

    tool = define_tool(
        name="lax",
        title="Lax",
        description="Ignores unknown fields.",
        group="basic",
        input_model=LaxInput,
        handler=handler,
    )
    with pytest.raises(InvalidToolDefinitionError, match="extra='forbid'"):
        ToolRegistry().register(tool)


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan"), float("inf"), 10_000.0])
def test_bad_timeouts_are_refused(timeout: float) -> None:
    tool = define_tool(
        name="slow",
        title="Slow",
        description="Bad timeout.",
        group="basic",
        input_model=EchoInput,
        handler=_echo,
        timeout_seconds=timeout,
    )
    with pytest.raises(InvalidToolDefinitionError, match="timeout_seconds"):
        ToolRegistry().register(tool)


def test_input_schema_is_generated_from_the_pydantic_model() -> None:
    tool = define_tool(
        name="notes.add",
        title="Add",
        description="Adds.",
        group="basic",
        input_model=AddNoteInput,
        handler=_echo_like,
    )
    schema = tool.definition.input_schema
    assert schema == AddNoteInput.model_json_schema()
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["content"]


async def _echo_like(invocation: ToolInvocation, args: AddNoteInput) -> str:
    return args.content


def test_definition_serializes_the_mcp_way() -> None:
    tool = define_tool(
        name="echo",
        title="Echo",
        description="Returns its input.",
        group="basic",
        input_model=EchoInput,
        output_model=EchoInput,
        handler=_echo,
        annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False),
    )
    mcp = tool.definition.to_mcp()
    assert set(mcp) == {
        "name",
        "title",
        "description",
        "inputSchema",
        "outputSchema",
        "annotations",
        "group",
    }
    assert mcp["annotations"] == {
        "readOnlyHint": True,
        "destructiveHint": False,
        "idempotentHint": False,
        "openWorldHint": True,
    }


def test_every_builtin_tool_registers_with_a_known_group() -> None:
    registry = ToolRegistry()
    registry.register_all(builtin_tools())
    assert tuple(d.name for d in registry.definitions()) == BUILTIN_TOOL_NAMES
    for registered in registry:
        assert registered.definition.group == registered.group.value
        assert registered.output_validator is not None
    assert registry.get("system.stats") is not None
    stats = registry.get("system.stats")
    assert stats is not None and stats.group is PermissionGroup.SYSTEM_MANAGEMENT
