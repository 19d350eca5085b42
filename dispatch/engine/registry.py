"""The tool registry: what tools exist, how their input is checked, and who handles them.

A :class:`Tool` is a :class:`~dispatch.engine.api.ToolDefinition` plus the pydantic model of
its input and an async handler ``(invocation, args) -> JSON``. :func:`define_tool` builds the
definition from the model, so the JSON Schema a client sees is exactly what the handler's
model accepts. :meth:`ToolRegistry.register` refuses misuse loudly: duplicate names, a
missing or unknown permission group, a schema that is not valid Draft 2020-12, an input
model that silently drops unknown fields.

A handler receives a :class:`ToolInvocation`: the verified caller and a data scope opened
for that caller's own context. It has no way to name another user.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

from context.api import UserExecutionContext
from data.api import UserDataScope
from dispatch.engine.api import (
    DuplicateToolError,
    EngineStats,
    InvalidToolDefinitionError,
    MissingToolGroupError,
    PermissionGroup,
    ToolAnnotations,
    ToolCaller,
    ToolDefinition,
    UnknownToolGroupError,
)
from dispatch.engine.permissions import parse_group
from dispatch.engine.rate_limits import RateLimitPolicy

__all__ = [
    "MAX_TOOL_TIMEOUT_SECONDS",
    "RegisteredTool",
    "Tool",
    "ToolHandler",
    "ToolInput",
    "ToolInvocation",
    "ToolOutput",
    "ToolRegistry",
    "define_tool",
]

#: No tool may run longer than this, whatever it declares.
MAX_TOOL_TIMEOUT_SECONDS = 600.0

InputT = TypeVar("InputT", bound=BaseModel)

#: What a handler may return: a JSON value, or a pydantic model (dumped in JSON mode).
ToolOutput: TypeAlias = JsonValue | BaseModel


class ToolInput(BaseModel):
    """Convenient base for tool input models: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolInvocation:
    """What a handler gets besides its arguments: the caller and the caller's own data.

    ``data`` is a scope opened for ``caller.context``; everything it reads and writes
    belongs to that user. The scope commits when the call succeeds and rolls back when the
    handler fails or times out.
    """

    caller: ToolCaller
    data: UserDataScope
    tool_name: str
    tool_call_id: str
    engine_stats: Callable[[], EngineStats]

    @property
    def context(self) -> UserExecutionContext:
        return self.caller.context


ToolHandler: TypeAlias = Callable[[ToolInvocation, InputT], Awaitable[ToolOutput]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Tool(Generic[InputT]):
    """A tool ready for registration. Build it with :func:`define_tool`."""

    definition: ToolDefinition
    input_model: type[InputT]
    handler: ToolHandler[InputT]
    output_model: type[BaseModel] | None = None
    #: The tool's own limits; the effective limit is the tighter of these and the group's.
    rate_limit: RateLimitPolicy | None = None
    #: The tool's timeout; ``None`` uses the engine's default.
    timeout_seconds: float | None = None

    @property
    def name(self) -> str:
        return self.definition.name


def define_tool(
    *,
    name: str,
    title: str,
    description: str,
    group: PermissionGroup | str | None,
    input_model: type[InputT],
    handler: ToolHandler[InputT],
    output_model: type[BaseModel] | None = None,
    annotations: ToolAnnotations | None = None,
    rate_limit: RateLimitPolicy | None = None,
    timeout_seconds: float | None = None,
) -> Tool[InputT]:
    """A :class:`Tool` whose ``input_schema`` (and ``output_schema``) are generated from the
    pydantic models. Raises :class:`InvalidToolDefinitionError` for a bad name or text."""
    try:
        definition = ToolDefinition(
            name=name,
            title=title,
            description=description,
            input_schema=input_model.model_json_schema(),
            output_schema=(
                None
                if output_model is None
                else output_model.model_json_schema(mode="serialization")
            ),
            annotations=annotations or ToolAnnotations(),
            group=None if group is None else str(group),
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise InvalidToolDefinitionError(
            f"invalid definition of tool {name!r}: {problems}"
        ) from None
    return Tool(
        definition=definition,
        input_model=input_model,
        handler=handler,
        output_model=output_model,
        rate_limit=rate_limit,
        timeout_seconds=timeout_seconds,
    )


@dataclass(frozen=True, slots=True)
class RegisteredTool:
    """A registered tool with its checked group and compiled schema validators."""

    tool: Tool[Any]
    group: PermissionGroup
    input_validator: Draft202012Validator
    output_validator: Draft202012Validator | None

    @property
    def definition(self) -> ToolDefinition:
        return self.tool.definition


def _validator(schema: dict[str, JsonValue], what: str) -> Draft202012Validator:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidToolDefinitionError(
            f"{what} is not a valid JSON Schema (Draft 2020-12): {exc.message[:200]}"
        ) from None
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


class ToolRegistry:
    """The tools an engine can execute, by name. Not shared between engines by accident:
    each engine is given its registry explicitly."""

    def __init__(self) -> None:
        self._tools: dict[str, RegisteredTool] = {}

    def register(self, tool: Tool[Any]) -> RegisteredTool:
        """Add ``tool``. Raises :class:`DuplicateToolError`, :class:`MissingToolGroupError`,
        :class:`UnknownToolGroupError` or :class:`InvalidToolDefinitionError`."""
        definition = tool.definition
        name = definition.name
        if name in self._tools:
            raise DuplicateToolError(f"a tool named {name!r} is already registered")
        if definition.group is None:
            raise MissingToolGroupError(
                f"tool {name!r} declares no permission group; every tool needs one"
            )
        group = parse_group(definition.group)
        if group is None:
            known = ", ".join(g.value for g in PermissionGroup)
            raise UnknownToolGroupError(
                f"tool {name!r} declares an unknown permission group; known groups: {known}"
            )
        if tool.input_model.model_config.get("extra") != "forbid":
            raise InvalidToolDefinitionError(
                f"the input model of tool {name!r} must refuse unknown fields (extra='forbid')"
            )
        if definition.input_schema.get("type") != "object":
            raise InvalidToolDefinitionError(f"the input schema of tool {name!r} must be an object")
        timeout = tool.timeout_seconds
        if timeout is not None and not (
            math.isfinite(timeout) and 0 < timeout <= MAX_TOOL_TIMEOUT_SECONDS
        ):
            raise InvalidToolDefinitionError(
                f"tool {name!r}: timeout_seconds must be in (0, {MAX_TOOL_TIMEOUT_SECONDS:g}]"
            )
        output_schema = definition.output_schema
        registered = RegisteredTool(
            tool=tool,
            group=group,
            input_validator=_validator(definition.input_schema, f"the input schema of {name!r}"),
            output_validator=(
                None
                if output_schema is None
                else _validator(output_schema, f"the output schema of {name!r}")
            ),
        )
        self._tools[name] = registered
        return registered

    def register_all(self, tools: Iterable[Tool[Any]]) -> None:
        """Register each of ``tools`` (see :meth:`register`)."""
        for tool in tools:
            self.register(tool)

    def get(self, name: str) -> RegisteredTool | None:
        """The registered tool called ``name``, or ``None``."""
        return self._tools.get(name)

    def definitions(self) -> list[ToolDefinition]:
        """Every registered definition, sorted by name."""
        return [self._tools[name].definition for name in sorted(self._tools)]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)

    def __iter__(self) -> Iterator[RegisteredTool]:
        return iter([self._tools[name] for name in sorted(self._tools)])
