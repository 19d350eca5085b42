"""The calculator: correct arithmetic, and every non-arithmetic input refused unevaluated."""

from __future__ import annotations

import ast
import builtins
import inspect
import operator
import os
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auth.api import Plan
from dispatch.engine.api import ToolStatus
from dispatch.engine.builtin_tools import arithmetic, calculator
from dispatch.engine.builtin_tools.arithmetic import (
    MAX_EXPRESSION_LENGTH,
    CalculationError,
    DivisionByZeroError,
    ExpressionTooLargeError,
    InvalidExpressionError,
    NotARealNumberError,
    UnsupportedExpressionError,
    evaluate_arithmetic,
)
from dispatch.engine.engine import LocalToolExecutionEngine
from dispatch.engine.testing import make_caller

# -- correct arithmetic -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("-7 % 3", 2),
        ("2 ** 10", 1024),
        ("2 ** -2", 0.25),
        ("-2 ** 2", -4),
        ("(-2) ** 2", 4),
        ("2 ** 3 ** 2", 512),
        ("+5 - -5", 10),
        ("0.1 + 0.2", 0.1 + 0.2),
        ("1_000 * 3", 3000),
        ("0x10 + 0b11", 19),
        ("1e3 / 4", 250.0),
        ("4 ** 0.5", 2.0),
        ("(-8) ** 2.0", 64.0),
        ("  ((((3))))  ", 3),
        ("2 ** 1023", 2**1023),
        ("(" * 200 + "1" + ")" * 200, 1),  # parentheses alone add no nesting
    ],
)
def test_evaluates_arithmetic_correctly(expression: str, expected: float) -> None:
    result = evaluate_arithmetic(expression)
    assert result == expected
    assert type(result) is type(expected)


_OPS: dict[str, Callable[[int, int], int | float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "//": operator.floordiv,
    "%": operator.mod,
}


@given(
    a=st.integers(min_value=-(10**12), max_value=10**12),
    b=st.integers(min_value=-(10**12), max_value=10**12).filter(lambda n: n != 0),
    symbol=st.sampled_from(sorted(_OPS)),
)
def test_agrees_with_python_integer_arithmetic(a: int, b: int, symbol: str) -> None:
    assert evaluate_arithmetic(f"({a}) {symbol} ({b})") == _OPS[symbol](a, b)


# -- hostile and non-arithmetic input ---------------------------------------------------------

HOSTILE: list[tuple[str, type[CalculationError]]] = [
    ("__import__('os').system('x')", UnsupportedExpressionError),
    ("().__class__", UnsupportedExpressionError),
    ("().__class__.__bases__[0].__subclasses__()", UnsupportedExpressionError),
    ("a", UnsupportedExpressionError),
    ("x.y", UnsupportedExpressionError),
    ("f()", UnsupportedExpressionError),
    ("f(1 / 0)", UnsupportedExpressionError),
    ("[1][0]", UnsupportedExpressionError),
    ("9**9**9", ExpressionTooLargeError),
    ("2**100000", ExpressionTooLargeError),
    ("10**400", ExpressionTooLargeError),
    ("(2**600) * (2**600)", ExpressionTooLargeError),
    ("'a'*10", UnsupportedExpressionError),
    ("b'a'", UnsupportedExpressionError),
    ("f'{1}'", UnsupportedExpressionError),
    ("lambda: 1", UnsupportedExpressionError),
    ("(lambda: 1)()", UnsupportedExpressionError),
    ("(x := 1)", UnsupportedExpressionError),
    ("[x for x in (1, 2)]", UnsupportedExpressionError),
    ("(x for x in ())", UnsupportedExpressionError),
    ("{1: 2}", UnsupportedExpressionError),
    ("1 if 1 else 2", UnsupportedExpressionError),
    ("1 < 2", UnsupportedExpressionError),
    ("1 and 2", UnsupportedExpressionError),
    ("1 << 2000", UnsupportedExpressionError),
    ("~1", UnsupportedExpressionError),
    ("not 1", UnsupportedExpressionError),
    ("True + 1", UnsupportedExpressionError),
    ("None", UnsupportedExpressionError),
    ("...", UnsupportedExpressionError),
    ("1j * 1j", UnsupportedExpressionError),
    ("9" * 400, ExpressionTooLargeError),
    ("1e400", ExpressionTooLargeError),
    ("1.5 ** 5000", ExpressionTooLargeError),
    ("-" * 80 + "1", ExpressionTooLargeError),
    ("1+" * 300 + "1", ExpressionTooLargeError),
    ("1" * (MAX_EXPRESSION_LENGTH + 1), ExpressionTooLargeError),
    ("import os", InvalidExpressionError),
    ("1; 2", InvalidExpressionError),
    ("1 +", InvalidExpressionError),
    ("1\x00", InvalidExpressionError),
    ("   ", InvalidExpressionError),
    ("1 / 0", DivisionByZeroError),
    ("1 // 0.0", DivisionByZeroError),
    ("5 % 0", DivisionByZeroError),
    ("0 ** -1", DivisionByZeroError),
    ("(-8) ** (1 / 3)", NotARealNumberError),
]


@pytest.fixture
def no_evaluation(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records any attempt to run code or reach the OS while the calculator works."""
    attempts: list[str] = []

    def trap(name: str) -> Callable[..., object]:
        def trapped(*args: object, **kwargs: object) -> object:
            attempts.append(name)
            raise AssertionError(f"{name} was called")

        return trapped

    monkeypatch.setattr(os, "system", trap("os.system"))
    monkeypatch.setattr(builtins, "eval", trap("eval"))
    monkeypatch.setattr(builtins, "exec", trap("exec"))
    return attempts


@pytest.mark.parametrize(("expression", "error"), HOSTILE, ids=[h[0][:40] for h in HOSTILE])
def test_rejects_non_arithmetic_without_evaluating(
    expression: str, error: type[CalculationError], no_evaluation: list[str]
) -> None:
    with pytest.raises(error) as caught:
        evaluate_arithmetic(expression)
    assert caught.value.code == error.code
    assert no_evaluation == []


def test_a_call_is_refused_for_being_a_call_before_its_arguments_are_computed() -> None:
    # Validation covers the whole tree first: the division by zero inside is never reached.
    with pytest.raises(UnsupportedExpressionError, match="function calls"):
        evaluate_arithmetic("print(1 / 0)")


def test_calculator_source_never_uses_eval_exec_or_compile() -> None:
    forbidden = {"eval", "exec", "compile", "__import__"}
    for module in (arithmetic, calculator):
        tree = ast.parse(inspect.getsource(module))
        called = {
            node.func.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        assert not called & forbidden, module.__name__


# -- through the engine -----------------------------------------------------------------------


async def test_calculator_tool_returns_the_result(engine: LocalToolExecutionEngine) -> None:
    result = await engine.execute_tool(make_caller(), "calculator", {"expression": "(2 + 3) * 4"})
    assert result.status is ToolStatus.SUCCESS
    assert result.result == {"expression": "(2 + 3) * 4", "result": 20}


@pytest.mark.parametrize(
    "expression", ["__import__('os').system('x')", "().__class__", "9**9**9", "'a'*10"]
)
async def test_calculator_tool_answers_invalid_input_for_hostile_expressions(
    engine: LocalToolExecutionEngine, expression: str, no_evaluation: list[str]
) -> None:
    result = await engine.execute_tool(make_caller(), "calculator", {"expression": expression})
    assert result.status is ToolStatus.INVALID_INPUT
    assert result.error_code in {"UNSUPPORTED_EXPRESSION", "EXPRESSION_TOO_LARGE"}
    assert result.result is None
    assert no_evaluation == []


async def test_calculator_tool_reports_division_by_zero_as_an_error(
    engine: LocalToolExecutionEngine,
) -> None:
    result = await engine.execute_tool(make_caller(Plan.PRO), "calculator", {"expression": "1/0"})
    assert result.status is ToolStatus.ERROR
    assert result.error_code == "DIVISION_BY_ZERO"
    assert result.error_message == "division by zero"
