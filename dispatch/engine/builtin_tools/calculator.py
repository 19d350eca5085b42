"""``calculator``: exact arithmetic on numbers, never ``eval`` (see :mod:`.arithmetic`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from dispatch.engine.api import PermissionGroup, ToolAnnotations, ToolFailure, ToolInputRejected
from dispatch.engine.builtin_tools.arithmetic import (
    MAX_EXPRESSION_LENGTH,
    CalculationError,
    evaluate_arithmetic,
)
from dispatch.engine.registry import Tool, ToolInput, ToolInvocation, define_tool

__all__ = ["CalculatorInput", "CalculatorOutput", "calculator_tool"]


class CalculatorInput(ToolInput):
    expression: str = Field(
        min_length=1,
        max_length=MAX_EXPRESSION_LENGTH,
        description="Arithmetic on numbers: + - * / // % ** and parentheses, e.g. (2 + 3) * 4",
    )


class CalculatorOutput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    expression: str
    result: int | float


async def _calculate(invocation: ToolInvocation, args: CalculatorInput) -> CalculatorOutput:
    try:
        value = evaluate_arithmetic(args.expression)
    except CalculationError as exc:
        failure = ToolInputRejected if exc.input_error else ToolFailure
        raise failure(exc.code, exc.message) from None
    return CalculatorOutput(expression=args.expression, result=value)


def calculator_tool() -> Tool[CalculatorInput]:
    return define_tool(
        name="calculator",
        title="Calculator",
        description=(
            "Evaluates an arithmetic expression on numbers with + - * / // % ** and "
            "parentheses. Names, functions and anything else are refused."
        ),
        group=PermissionGroup.BASIC,
        input_model=CalculatorInput,
        output_model=CalculatorOutput,
        handler=_calculate,
        annotations=ToolAnnotations(
            read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
        timeout_seconds=5.0,
    )
