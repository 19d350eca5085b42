"""A safe arithmetic evaluator: numbers, ``+ - * / // % **``, unary ``+``/``-``, parentheses.

Nothing here ever executes the input. The expression is parsed with
``ast.parse(mode="eval")`` and then checked in two passes:

1. *Validation* walks every node of the tree before anything is computed and refuses the
   whole expression if any node is not one of the few allowed kinds (numeric literals,
   binary and unary operators from the list above). Names, attribute access, calls,
   subscripts, strings, comprehensions, lambdas, assignments expressions ... are rejected
   here, so ``f(1/0)`` is refused for the call, not evaluated for the division.
2. *Computation* evaluates the (now known to be arithmetic) tree, bounding every result
   before it is computed where the cost could explode: integer powers and products are
   estimated from bit lengths first, exponents are capped, and every intermediate result
   must stay within :data:`MAX_INT_BITS` bits (integers) or be finite (floats).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import ClassVar

__all__ = [
    "MAX_EXPONENT",
    "MAX_EXPRESSION_LENGTH",
    "MAX_INT_BITS",
    "MAX_NESTING",
    "CalculationError",
    "DivisionByZeroError",
    "ExpressionTooLargeError",
    "InvalidExpressionError",
    "NotARealNumberError",
    "UnsupportedExpressionError",
    "evaluate_arithmetic",
]

#: Longest accepted expression, in characters.
MAX_EXPRESSION_LENGTH = 500
#: Deepest accepted nesting of operators.
MAX_NESTING = 50
#: Largest integer magnitude, in bits, of any literal or intermediate result (~308 digits).
MAX_INT_BITS = 1024
#: Largest accepted absolute value of an exponent.
MAX_EXPONENT = 10_000

Number = int | float


class CalculationError(Exception):
    """Base of every refusal; ``code`` is stable, ``message`` is safe to show the caller."""

    code: ClassVar[str] = "CALCULATION_ERROR"
    #: Whether the input itself is at fault (rather than its value, e.g. x/0).
    input_error: ClassVar[bool] = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidExpressionError(CalculationError):
    """The text is not a syntactically valid expression."""

    code: ClassVar[str] = "INVALID_EXPRESSION"


class UnsupportedExpressionError(CalculationError):
    """The expression uses something other than numbers and arithmetic operators."""

    code: ClassVar[str] = "UNSUPPORTED_EXPRESSION"


class ExpressionTooLargeError(CalculationError):
    """The expression, a literal, an exponent or a result exceeds the bounds."""

    code: ClassVar[str] = "EXPRESSION_TOO_LARGE"


class DivisionByZeroError(CalculationError):
    code: ClassVar[str] = "DIVISION_BY_ZERO"
    input_error: ClassVar[bool] = False


class NotARealNumberError(CalculationError):
    """The result would be complex (a negative number to a fractional power)."""

    code: ClassVar[str] = "NOT_A_REAL_NUMBER"
    input_error: ClassVar[bool] = False


_BINARY_SYMBOLS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}
_UNARY_SYMBOLS: dict[type[ast.unaryop], str] = {ast.UAdd: "+", ast.USub: "-"}

# Every node type that may appear anywhere in an accepted tree (operators included).
_ALLOWED_NODES: frozenset[type[ast.AST]] = frozenset(
    {ast.Expression, ast.Constant, ast.BinOp, ast.UnaryOp, *_BINARY_SYMBOLS, *_UNARY_SYMBOLS}
)

_DESCRIPTIONS: dict[type[ast.AST], str] = {
    ast.Name: "names are",
    ast.Attribute: "attribute access is",
    ast.Call: "function calls are",
    ast.Subscript: "subscripts are",
    ast.Lambda: "lambdas are",
    ast.NamedExpr: "assignment expressions are",
    ast.ListComp: "comprehensions are",
    ast.SetComp: "comprehensions are",
    ast.DictComp: "comprehensions are",
    ast.GeneratorExp: "comprehensions are",
    ast.Compare: "comparisons are",
    ast.BoolOp: "boolean operators are",
    ast.IfExp: "conditional expressions are",
    ast.List: "lists are",
    ast.Tuple: "tuples are",
    ast.Set: "sets are",
    ast.Dict: "dicts are",
    ast.JoinedStr: "strings are",
    ast.Starred: "starred expressions are",
    ast.Await: "await is",
    ast.Yield: "yield is",
    ast.YieldFrom: "yield is",
    ast.Slice: "slices are",
}


def _check_bits(value: int) -> int:
    if value.bit_length() > MAX_INT_BITS:
        raise ExpressionTooLargeError(f"an intermediate result exceeds {MAX_INT_BITS} bits")
    return value


def _check_number(value: Number) -> Number:
    if isinstance(value, int):
        return _check_bits(value)
    if not math.isfinite(value):
        raise ExpressionTooLargeError("the result is too large to represent")
    return value


def _literal(node: ast.Constant) -> Number:
    value = node.value
    # bool is an int subclass; True is not a number here.
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = "strings" if isinstance(value, str | bytes) else f"{type(value).__name__} values"
        raise UnsupportedExpressionError(f"{kind} are not allowed; only numbers")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ExpressionTooLargeError(f"a number literal exceeds {MAX_INT_BITS} bits")
    if isinstance(value, float) and not math.isfinite(value):
        raise ExpressionTooLargeError("a number literal is too large to represent")
    return value


def _validate(tree: ast.Expression) -> None:
    """Refuse the tree unless every node is arithmetic and nesting is bounded."""
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        kind = type(node)
        if kind not in _ALLOWED_NODES:
            what = _DESCRIPTIONS.get(kind, f"{kind.__name__} expressions are")
            raise UnsupportedExpressionError(
                f"{what} not allowed; only numbers, + - * / // % ** and parentheses"
            )
        if depth > MAX_NESTING:
            raise ExpressionTooLargeError(f"the expression is nested deeper than {MAX_NESTING}")
        if isinstance(node, ast.Constant):
            _literal(node)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise ExpressionTooLargeError(f"exponents are limited to ±{MAX_EXPONENT}")
    if base == 0 and exponent < 0:
        raise DivisionByZeroError("zero cannot be raised to a negative power")
    if isinstance(exponent, float) and not exponent.is_integer() and base < 0:
        raise NotARealNumberError("a negative number to a fractional power is not a real number")
    # An integer result has at least (bits(base) - 1) * exponent bits: refuse before computing.
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS
    ):
        raise ExpressionTooLargeError(f"the result would exceed {MAX_INT_BITS} bits")
    result: object = operator.pow(base, exponent)
    if not isinstance(result, int | float):  # complex; excluded above, kept as a guard
        raise NotARealNumberError("the result is not a real number")
    return result


def _multiply(left: Number, right: Number) -> Number:
    if (
        isinstance(left, int)
        and isinstance(right, int)
        and abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS + 1
    ):
        raise ExpressionTooLargeError(f"the result would exceed {MAX_INT_BITS} bits")
    return left * right


def _divide(op: Callable[[Number, Number], Number]) -> Callable[[Number, Number], Number]:
    def divide(left: Number, right: Number) -> Number:
        if right == 0:
            raise DivisionByZeroError("division by zero")
        return op(left, right)

    return divide


_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _multiply,
    ast.Div: _divide(operator.truediv),
    ast.FloorDiv: _divide(operator.floordiv),
    ast.Mod: _divide(operator.mod),
    ast.Pow: _power,
}


def _compute(node: ast.AST) -> Number:
    # Only node kinds admitted by _validate reach here; recursion depth ≤ MAX_NESTING.
    if isinstance(node, ast.Constant):
        return _literal(node)
    if isinstance(node, ast.UnaryOp):
        operand = _compute(node.operand)
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BinOp):
        left = _compute(node.left)
        right = _compute(node.right)
        try:
            result = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise DivisionByZeroError("division by zero") from None
        except OverflowError:
            raise ExpressionTooLargeError("the result is too large to represent") from None
        return _check_number(result)
    raise UnsupportedExpressionError("unsupported expression")  # unreachable after _validate


def evaluate_arithmetic(expression: str) -> Number:
    """The value of ``expression``; raises a :class:`CalculationError` subclass otherwise.

    Never evaluates anything but the arithmetic described in the module docstring.
    """
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise ExpressionTooLargeError(
            f"the expression is longer than {MAX_EXPRESSION_LENGTH} characters"
        )
    if not expression.strip():
        raise InvalidExpressionError("the expression is empty")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise InvalidExpressionError("the expression is not valid arithmetic syntax") from None
    _validate(tree)
    return _compute(tree.body)
