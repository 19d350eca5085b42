"""The ``local`` provider: a deterministic, offline stand-in for a language model.

It lets the whole system (agent loops included) run and be tested with no network. Same
input, same output: no randomness, no clock, no temperature. What it does, in order:

1. **Tool results present.** If the conversation holds tool results after the latest user
   message, it answers with a final text summarising them, one line per tool call, and
   calls no further tools (so an agent loop always terminates).
2. **Tool rules.** Otherwise it splits the latest user message into *clauses* (one per
   line or ``;``-separated part) and tries these rules on each clause, first match wins
   (case-insensitive, see :data:`TOOL_RULES` for the exact patterns):

   * ``forget``: "forget note note_01J..." / "delete note 42" → ``notes.delete``
     {note_id};
   * ``recall``: "what do you remember about paris" / "search notes for paris" →
     ``notes.search`` {query};
   * ``remember``: "remember that the cat is called Tom" / "note: buy milk" →
     ``notes.add`` {text};
   * ``list_threads``: "list threads" / "show my threads" → ``threads.list`` {};
   * ``list_runs``: "list runs" / "show my runs" → ``runs.list`` {};
   * ``time``: "what time is it" / "what's the date" → ``time.now`` {};
   * ``arithmetic``: "what is 12*(3+4)" / "calculate 2^10" / "3 + 4" → ``calculator``
     {expression}.

   A rule only produces a call when its tool is among the request's offered tools and
   ``tool_choice`` is not ``"none"``; every matching clause yields one call, in order.
   Argument names follow the offered tool's JSON Schema: the first of the rule's
   preferred names that the schema declares (``note_id`` or ``id``; ``text`` or
   ``content``), else the schema's only required property, else the first preferred name.
   Tool-call ids are derived from a hash of the conversation, so they are deterministic too.
3. **Direct answer.** With no call to make it answers in text.

With ``response_format="json"`` every text answer (summary or direct) is delivered as a
JSON object built from ``response_schema``: per property ``const``, else ``default``, else
the first ``enum`` value, else a value of the declared type (``0`` or the minimum for
numbers, ``false``, ``[]``), with every string carrying the text answer; without a schema
it is ``{"answer": text}``.

Every answer has a short thinking trace (``reasoning``), streamed before the answer.
Usage is counted with :mod:`dispatch.llm.tokens`. ``max_tokens`` truncates text answers
(finish reason ``length``). The model name is always :data:`LOCAL_MODEL`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dispatch.llm.api import (
    ChatMessage,
    FinishReason,
    Role,
    StreamChunk,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
)
from dispatch.llm.providers.base import (
    ProviderCall,
    ProviderRejectedRequestError,
    ProviderResult,
    ProviderStreamItem,
)
from dispatch.llm.tokens import (
    count_completion_tokens,
    count_prompt_tokens,
    count_text_tokens,
    truncate_to_tokens,
)

__all__ = [
    "LOCAL_MODEL",
    "TOOL_RULES",
    "LocalProvider",
    "ToolRule",
    "build_json_instance",
    "split_clauses",
]

LOCAL_MODEL = "local-rules-1"
_ECHO_CHARS = 160
_RESULT_CHARS = 300
_MAX_SCHEMA_DEPTH = 12


#: ``(preferred argument names, value)`` pairs a rule extracts from a clause.
_Arguments = tuple[tuple[tuple[str, ...], str], ...]


@dataclass(frozen=True, slots=True)
class ToolRule:
    """A rule: when ``pattern`` matches a clause, call ``tool`` with ``arguments(match)``.

    ``arguments`` returns ``(preferred argument names, value)`` pairs; the names are
    fitted to the offered tool's schema.
    """

    name: str
    tool: str
    pattern: re.Pattern[str]
    arguments: Callable[[re.Match[str]], _Arguments]


def _no_arguments(_match: re.Match[str]) -> _Arguments:
    return ()


def _group(names: tuple[str, ...], group: str) -> Callable[[re.Match[str]], _Arguments]:
    def arguments(match: re.Match[str]) -> _Arguments:
        return ((names, match.group(group).strip()),)

    return arguments


def _rule(
    name: str,
    tool: str,
    pattern: str,
    arguments: Callable[[re.Match[str]], _Arguments],
) -> ToolRule:
    return ToolRule(name, tool, re.compile(pattern, re.IGNORECASE | re.DOTALL), arguments)


_END = r"\s*[?.!]*\s*$"
_ARITHMETIC = r"(?P<expression>[\d\s.+\-*/%^()]*\d[\d\s.]*[+\-*/%^][\d\s.+\-*/%^()]*)"

#: The rules, in the order they are tried on each clause.
TOOL_RULES: tuple[ToolRule, ...] = (
    _rule(
        "forget",
        "notes.delete",
        r"^(?:please\s+)?(?:forget|delete|remove)\s+(?:the\s+)?note\s+(?:id\s+|#)?"
        r"(?P<note_id>[A-Za-z0-9_:\-]+)" + _END,
        _group(("note_id", "id"), "note_id"),
    ),
    _rule(
        "recall",
        "notes.search",
        r"^(?:what\s+do\s+you\s+remember\s+(?:about|of|on)"
        r"|what\s+did\s+i\s+(?:note|say|tell\s+you)\s+about"
        r"|search\s+(?:my\s+|the\s+)?notes\s+(?:(?:for|about|on)\b)?"
        r"|find\s+(?:my\s+|the\s+)?notes?\s+(?:(?:about|on|for|with)\b)?)"
        r"\s*(?P<query>\S.*?)" + _END,
        _group(("query", "text"), "query"),
    ),
    _rule(
        "remember",
        "notes.add",
        r"^(?:please\s+)?(?:remember|note|make\s+a\s+note|take\s+a\s+note|save\s+a\s+note"
        r"|jot\s+down)\b(?:\s+that\b)?\s*[:,\-]?\s*(?P<text>\S.*?)\s*$",
        _group(("text", "content"), "text"),
    ),
    _rule(
        "list_threads",
        "threads.list",
        r"^(?:please\s+)?(?:list|show)\s+(?:me\s+)?(?:all\s+)?(?:my\s+|the\s+)?"
        r"(?:conversation\s+)?threads" + _END,
        _no_arguments,
    ),
    _rule(
        "list_runs",
        "runs.list",
        r"^(?:please\s+)?(?:list|show)\s+(?:me\s+)?(?:all\s+)?(?:my\s+|the\s+)?"
        r"(?:agent\s+)?runs" + _END,
        _no_arguments,
    ),
    _rule(
        "time",
        "time.now",
        r"^.*\b(?:what\s+time|current\s+(?:time|date)|what(?:'s|\s+is)\s+(?:the\s+)?"
        r"(?:time|date)|what\s+day\s+is\s+it|time\s+is\s+it)\b.*$",
        _no_arguments,
    ),
    _rule(
        "arithmetic",
        "calculator",
        r"^(?:(?:what\s+is|what's|calculate|compute|evaluate|how\s+much\s+is)\s+)?"
        + _ARITHMETIC
        + r"(?:\s*=)?\s*\??\s*$",
        _group(("expression",), "expression"),
    ),
)

_CLAUSE_SPLIT = re.compile(r"[\n;]+")


def split_clauses(text: str) -> list[str]:
    """The clauses of a message: its lines and ``;``-separated parts, stripped, non-empty."""
    return [part.strip() for part in _CLAUSE_SPLIT.split(text) if part.strip()]


def _schema_properties(spec: ToolSpec) -> tuple[list[str], list[str]]:
    properties = spec.parameters.get("properties")
    names = list(properties) if isinstance(properties, dict) else []
    required = spec.parameters.get("required")
    required_names = (
        [item for item in required if isinstance(item, str)] if isinstance(required, list) else []
    )
    return names, required_names


def _fit_arguments(spec: ToolSpec, pairs: _Arguments) -> dict[str, Any]:
    declared, required = _schema_properties(spec)
    arguments: dict[str, Any] = {}
    for preferred, value in pairs:
        chosen = next((name for name in preferred if name in declared), None)
        if chosen is None:
            missing = [name for name in required if name not in arguments]
            chosen = missing[0] if len(missing) == 1 else preferred[0]
        arguments[chosen] = value
    return arguments


def _digest(payload: object) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _conversation_digest(messages: tuple[ChatMessage, ...]) -> str:
    return _digest([message.model_dump(mode="json") for message in messages])


def _last_user_index(messages: tuple[ChatMessage, ...]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role is Role.USER:
            return index
    return None


def _shorten(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _describe_result(content: str) -> str:
    try:
        value = json.loads(content)
    except ValueError:
        return _shorten(content, _RESULT_CHARS)
    return _shorten(json.dumps(value, ensure_ascii=False, separators=(", ", ": ")), _RESULT_CHARS)


# --------------------------------------------------------------------------------------
# JSON instances from a schema (structured output)
# --------------------------------------------------------------------------------------


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            if not isinstance(node, Mapping) or part not in node:
                return {}
            node = node[part]
        return node if isinstance(node, Mapping) else {}
    return schema


def _number(schema: Mapping[str, Any], integer: bool) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    value: float = 0
    if isinstance(low, int | float):
        value = low + (1 if "exclusiveMinimum" in schema and "minimum" not in schema else 0)
    elif isinstance(high, int | float) and high < 0:
        value = high - (1 if "exclusiveMaximum" in schema and "maximum" not in schema else 0)
    return int(value) if integer else float(value)


_FORMAT_EXAMPLES = {
    "date-time": "2000-01-01T00:00:00Z",
    "date": "2000-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def _string(schema: Mapping[str, Any], text: str) -> str:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMAT_EXAMPLES:
        return _FORMAT_EXAMPLES[fmt]
    value = text
    high = schema.get("maxLength")
    if isinstance(high, int):
        value = value[:high]
    low = schema.get("minLength")
    if isinstance(low, int) and len(value) < low:
        value = value + "." * (low - len(value))
    return value


def _first_option(schema: Mapping[str, Any]) -> Any:
    """The first non-null alternative of an ``anyOf``/``oneOf``/``allOf``, if any."""
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            usable = [
                option
                for option in options
                if not (isinstance(option, Mapping) and option.get("type") == "null")
            ]
            return (usable or options)[0]
    return None


def _typed(
    kind: Any, schema: Mapping[str, Any], root: Mapping[str, Any], text: str, depth: int
) -> Any:
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            return {}
        return {name: _instance(sub, root, text, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        count = schema.get("minItems")
        item = _instance(schema.get("items", {}), root, text, depth + 1)
        return [item] * count if isinstance(count, int) and count > 0 else []
    scalars: dict[str, Callable[[], Any]] = {
        "string": lambda: _string(schema, text),
        "integer": lambda: _number(schema, integer=True),
        "number": lambda: _number(schema, integer=False),
        "boolean": lambda: False,
    }
    make = scalars.get(kind) if isinstance(kind, str) else None
    return make() if make is not None else None


def _instance(schema: Any, root: Mapping[str, Any], text: str, depth: int) -> Any:
    if not isinstance(schema, Mapping) or depth > _MAX_SCHEMA_DEPTH:
        return None
    schema = _resolve(schema, root)
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    option = _first_option(schema)
    if option is not None:
        return _instance(option, root, text, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((item for item in kind if item != "null"), "null")
    if kind is None:
        return _typed("object", schema, root, text, depth) if "properties" in schema else text
    return _typed(kind, schema, root, text, depth)


def build_json_instance(schema: Mapping[str, Any] | None, text: str) -> Any:
    """A deterministic JSON value for ``schema`` whose strings carry ``text``.

    Without a schema the value is ``{"answer": text}``.
    """
    if schema is None:
        return {"answer": text}
    return _instance(schema, schema, text, 0)


# --------------------------------------------------------------------------------------
# The provider
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Decision:
    content: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: FinishReason
    trace: tuple[str, ...]


class LocalProvider:
    """The deterministic offline provider; see the module docstring for its rules."""

    def __init__(self, *, name: str = "local", rules: tuple[ToolRule, ...] = TOOL_RULES) -> None:
        self._name = name
        self._rules = rules

    @property
    def name(self) -> str:
        return self._name

    @property
    def default_model(self) -> str:
        return LOCAL_MODEL

    async def aclose(self) -> None:
        return None

    async def complete(self, call: ProviderCall) -> ProviderResult:
        return self._result(call, self.decide(call))

    async def stream(self, call: ProviderCall) -> AsyncGenerator[ProviderStreamItem, None]:
        decision = self.decide(call)
        result = self._result(call, decision)
        for line in decision.trace:
            yield StreamChunk(thinking=line + "\n")
        for piece in re.findall(r"\S+\s*|\s+", result.content):
            yield StreamChunk(delta=piece)
        for index, tool_call in enumerate(result.tool_calls):
            arguments = json.dumps(tool_call.arguments, ensure_ascii=False)
            half = len(arguments) // 2
            yield StreamChunk(
                tool_calls=(
                    ToolCallDelta(
                        index=index,
                        id=tool_call.id,
                        name=tool_call.name,
                        arguments_delta=arguments[:half],
                    ),
                )
            )
            yield StreamChunk(
                tool_calls=(ToolCallDelta(index=index, arguments_delta=arguments[half:]),)
            )
        yield result

    # -- decisions ---------------------------------------------------------------------

    def decide(self, call: ProviderCall) -> _Decision:
        """What the model says for ``call`` (public so tests can inspect the trace)."""
        decision = self._decide_text(call)
        if call.response_format != "json" or decision.tool_calls:
            return decision
        value = build_json_instance(call.response_schema, decision.content)
        trace = (*decision.trace, "Answering with a JSON object built from the requested schema.")
        return _Decision(json.dumps(value, ensure_ascii=False), (), "stop", trace)

    def _decide_text(self, call: ProviderCall) -> _Decision:
        messages = call.messages
        last_user = _last_user_index(messages)
        if last_user is not None and any(
            message.role is Role.TOOL for message in messages[last_user + 1 :]
        ):
            return self._summarise(messages[last_user + 1 :])
        text = (messages[last_user].content or "") if last_user is not None else ""
        trace = [
            f"Read the latest user message: {count_text_tokens(text)} tokens, "
            f"{len(split_clauses(text))} clause(s)."
        ]
        calls = self._tool_calls(call, text, trace)
        if calls:
            return _Decision("", calls, "tool_calls", tuple(trace))
        if call.tool_choice == "required":
            raise ProviderRejectedRequestError(
                'tool_choice is "required" but no tool rule matched the message',
                provider=self._name,
            )
        trace.append("Answering directly.")
        return _Decision(self._direct_answer(text, call.tools), (), "stop", tuple(trace))

    def _tool_calls(self, call: ProviderCall, text: str, trace: list[str]) -> tuple[ToolCall, ...]:
        offered = {spec.name: spec for spec in call.tools}
        if call.tool_choice == "none":
            offered = {}
        conversation = _conversation_digest(call.messages)
        calls: list[ToolCall] = []
        for number, clause in enumerate(split_clauses(text), start=1):
            rule, match = self._match(clause)
            if rule is None or match is None:
                trace.append(f"Clause {number}: no tool rule matched.")
                continue
            spec = offered.get(rule.tool)
            if spec is None:
                trace.append(
                    f"Clause {number}: rule '{rule.name}' matched, but {rule.tool} is not offered."
                )
                continue
            arguments = _fit_arguments(spec, rule.arguments(match))
            call_id = "call_" + _digest([conversation, number, rule.tool])[:24]
            calls.append(ToolCall(id=call_id, name=rule.tool, arguments=arguments))
            trace.append(f"Clause {number}: rule '{rule.name}' matched; calling {rule.tool}.")
        return tuple(calls)

    def _match(self, clause: str) -> tuple[ToolRule | None, re.Match[str] | None]:
        for rule in self._rules:
            match = rule.pattern.match(clause)
            if match is not None:
                return rule, match
        return None, None

    def _summarise(self, tail: tuple[ChatMessage, ...]) -> _Decision:
        names: dict[str, str] = {}
        for message in tail:
            for tool_call in message.tool_calls:
                names[tool_call.id] = tool_call.name
        results = [message for message in tail if message.role is Role.TOOL]
        lines = [
            f"- {names.get(message.tool_call_id or '', message.name or 'tool')}: "
            f"{_describe_result(message.content or '')}"
            for message in results
        ]
        content = "Here is what the tools returned:\n" + "\n".join(lines)
        trace = (f"Tool results are in: summarising {len(results)} result(s).",)
        return _Decision(content, (), "stop", trace)

    @staticmethod
    def _direct_answer(text: str, tools: tuple[ToolSpec, ...]) -> str:
        if not text.strip():
            return "There is no user message to answer."
        answer = (
            f'You said: "{_shorten(text, _ECHO_CHARS)}" ({count_text_tokens(text)} tokens). '
            "This is the offline local model; it answers by fixed rules."
        )
        if tools:
            answer += " Tools on offer: " + ", ".join(sorted(spec.name for spec in tools)) + "."
        return answer

    def _result(self, call: ProviderCall, decision: _Decision) -> ProviderResult:
        content, cut = truncate_to_tokens(decision.content, call.max_tokens)
        finish: FinishReason = "length" if cut else decision.finish_reason
        usage = TokenUsage.of(
            count_prompt_tokens(call.messages, call.tools),
            count_completion_tokens(content, decision.tool_calls),
        )
        return ProviderResult(
            model=LOCAL_MODEL,
            content=content,
            tool_calls=decision.tool_calls,
            finish_reason=finish,
            usage=usage,
            reasoning="\n".join(decision.trace),
        )
