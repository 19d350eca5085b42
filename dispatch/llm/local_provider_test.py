"""The local provider: determinism, every tool rule, tool offering, summaries, streaming."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from dispatch.llm.api import ChatMessage, StreamChunk, ToolCall, ToolSpec
from dispatch.llm.providers.base import ProviderCall, ProviderRejectedRequestError, ProviderResult
from dispatch.llm.providers.local import (
    LOCAL_MODEL,
    LocalProvider,
    build_json_instance,
    split_clauses,
)
from dispatch.llm.tokens import (
    count_completion_tokens,
    count_prompt_tokens,
    count_text_tokens,
    truncate_to_tokens,
)


def _spec(name: str, **properties: str) -> ToolSpec:
    return ToolSpec(
        name=name,
        description=f"the {name} tool",
        parameters={
            "type": "object",
            "properties": {key: {"type": kind} for key, kind in properties.items()},
            "required": list(properties),
        },
    )


ALL_TOOLS = (
    _spec("notes.add", text="string"),
    _spec("notes.search", query="string"),
    _spec("notes.delete", note_id="string"),
    _spec("calculator", expression="string"),
    _spec("time.now"),
    _spec("threads.list"),
    _spec("runs.list"),
)


def _call(
    *messages: ChatMessage, tools: tuple[ToolSpec, ...] = ALL_TOOLS, **kw: Any
) -> ProviderCall:
    return ProviderCall(messages=messages, tools=tools, **kw)


async def _ask(text: str, **kw: Any) -> ProviderResult:
    return await LocalProvider().complete(_call(ChatMessage.user(text), **kw))


@pytest.mark.parametrize(
    ("text", "tool", "arguments"),
    [
        ("remember that the cat is called Tom", "notes.add", {"text": "the cat is called Tom"}),
        ("Remember: buy milk", "notes.add", {"text": "buy milk"}),
        ("note: dentist on Friday", "notes.add", {"text": "dentist on Friday"}),
        ("please make a note to call Bob", "notes.add", {"text": "to call Bob"}),
        ("what do you remember about Paris?", "notes.search", {"query": "Paris"}),
        ("search notes for quarterly report", "notes.search", {"query": "quarterly report"}),
        ("search my notes format", "notes.search", {"query": "format"}),
        ("find notes about tax", "notes.search", {"query": "tax"}),
        ("forget note note_01HZX3", "notes.delete", {"note_id": "note_01HZX3"}),
        ("delete note 42.", "notes.delete", {"note_id": "42"}),
        ("what is 12*(3+4)?", "calculator", {"expression": "12*(3+4)"}),
        ("calculate 2^10", "calculator", {"expression": "2^10"}),
        ("3.5 + 4", "calculator", {"expression": "3.5 + 4"}),
        ("What time is it?", "time.now", {}),
        ("what's the date today", "time.now", {}),
        ("list threads", "threads.list", {}),
        ("show my threads", "threads.list", {}),
        ("list runs", "runs.list", {}),
        ("Show me all my runs!", "runs.list", {}),
    ],
)
async def test_each_rule_calls_its_tool(text: str, tool: str, arguments: dict[str, Any]) -> None:
    result = await _ask(text)
    assert result.finish_reason == "tool_calls"
    assert result.content == ""
    assert [(call.name, call.arguments) for call in result.tool_calls] == [(tool, arguments)]
    assert result.tool_calls[0].id.startswith("call_")


@pytest.mark.parametrize(
    "text",
    [
        "hello there",
        "the year is 2024",
        "call 555 1234",
        "what is love",
        "remembering things is hard",
        "notes are useful",
    ],
)
async def test_messages_matching_no_rule_get_a_text_answer(text: str) -> None:
    result = await _ask(text)
    assert result.tool_calls == ()
    assert result.finish_reason == "stop"
    assert text in result.content


async def test_same_input_gives_the_same_output() -> None:
    messages = (ChatMessage.system("be brief"), ChatMessage.user("remember the gate code is 4411"))
    first = await LocalProvider().complete(_call(*messages))
    second = await LocalProvider().complete(_call(*messages))
    assert first == second
    other = await LocalProvider().complete(
        _call(ChatMessage.user("remember the gate code is 4412"))
    )
    assert other.tool_calls[0].id != first.tool_calls[0].id


async def test_only_offered_tools_are_called() -> None:
    only_calculator = (_spec("calculator", expression="string"),)
    result = await _ask("remember to water the plants", tools=only_calculator)
    assert result.tool_calls == ()
    assert "not offered" in (result.reasoning or "")
    assert (await _ask("what is 2+2", tools=())).tool_calls == ()


async def test_tool_choice_none_calls_nothing_and_required_without_match_is_rejected() -> None:
    assert (await _ask("what is 2+2", tool_choice="none")).tool_calls == ()
    with pytest.raises(ProviderRejectedRequestError):
        await _ask("hello", tool_choice="required")


async def test_each_clause_can_call_a_tool_in_order() -> None:
    result = await _ask("remember the wifi password is hunter2; what is 6*7\nlist runs")
    assert [call.name for call in result.tool_calls] == ["notes.add", "calculator", "runs.list"]
    assert len({call.id for call in result.tool_calls}) == 3
    assert split_clauses(" a ;; b \n\n c ") == ["a", "b", "c"]


async def test_argument_names_follow_the_offered_schema() -> None:
    tools = (_spec("notes.delete", id="string"), _spec("notes.add", body="string"))
    deleted = await _ask("forget note n1", tools=tools)
    assert deleted.tool_calls[0].arguments == {"id": "n1"}
    added = await _ask("remember eggs", tools=tools)
    assert added.tool_calls[0].arguments == {"body": "eggs"}


async def test_after_tool_results_it_answers_with_a_summary_and_no_more_calls() -> None:
    call = ToolCall(id="call_1", name="calculator", arguments={"expression": "12*(3+4)"})
    messages = (
        ChatMessage.user("what is 12*(3+4)"),
        ChatMessage.assistant(None, (call,)),
        ChatMessage.tool("call_1", json.dumps({"result": 84})),
    )
    result = await LocalProvider().complete(_call(*messages))
    assert result.tool_calls == ()
    assert result.finish_reason == "stop"
    assert "calculator" in result.content
    assert "84" in result.content
    # A new user message after the results starts a new decision.
    follow_up = await LocalProvider().complete(_call(*messages, ChatMessage.user("list threads")))
    assert [c.name for c in follow_up.tool_calls] == ["threads.list"]


async def test_stream_carries_thinking_text_and_tool_deltas_that_assemble_to_the_result() -> None:
    provider = LocalProvider()
    for text in ("hello local model", "remember a; what is 1+1"):
        call = _call(ChatMessage.user(text))
        items = [item async for item in provider.stream(call)]
        final = items[-1]
        assert isinstance(final, ProviderResult)
        assert final == await provider.complete(call)
        chunks = [item for item in items[:-1] if isinstance(item, StreamChunk)]
        assert len(chunks) == len(items) - 1
        assert "".join(chunk.thinking for chunk in chunks).strip() == final.reasoning
        assert "".join(chunk.delta for chunk in chunks) == final.content
        assembled: dict[int, dict[str, str]] = {}
        for chunk in chunks:
            for delta in chunk.tool_calls:
                slot = assembled.setdefault(delta.index, {"id": "", "name": "", "args": ""})
                slot["id"] = delta.id or slot["id"]
                slot["name"] = delta.name or slot["name"]
                slot["args"] += delta.arguments_delta
        rebuilt = [
            ToolCall(id=slot["id"], name=slot["name"], arguments=json.loads(slot["args"]))
            for _, slot in sorted(assembled.items())
        ]
        assert tuple(rebuilt) == final.tool_calls


async def test_usage_uses_the_package_token_count_and_max_tokens_truncates() -> None:
    call = _call(ChatMessage.user("tell me something"))
    result = await LocalProvider().complete(call)
    assert result.model == LOCAL_MODEL
    assert result.usage.prompt_tokens == count_prompt_tokens(call.messages, call.tools)
    assert result.usage.completion_tokens == count_completion_tokens(result.content)
    short = await LocalProvider().complete(
        _call(ChatMessage.user("tell me something"), max_tokens=3)
    )
    assert short.finish_reason == "length"
    assert short.usage.completion_tokens <= 3
    assert result.content.startswith(short.content)


class _Answer(BaseModel):
    answer: str
    confidence: float
    tags: list[str]
    kind: str = "plain"


async def test_json_mode_builds_an_instance_of_the_schema() -> None:
    call = _call(
        ChatMessage.user("summarise my day"),
        response_format="json",
        response_schema=_Answer.model_json_schema(),
    )
    result = await LocalProvider().complete(call)
    parsed = _Answer.model_validate_json(result.content)
    assert "summarise my day" in parsed.answer
    assert parsed.kind == "plain"
    assert build_json_instance(None, "x") == {"answer": "x"}
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 3}, "e": {"enum": ["b", "a"]}},
    }
    assert build_json_instance(schema, "t") == {"n": 3, "e": "b"}


def test_token_count_rule() -> None:
    assert count_text_tokens("") == 0
    assert count_text_tokens("   ") == 0
    assert count_text_tokens("cat") == 1
    assert count_text_tokens("cats") == 1
    assert count_text_tokens("kitten") == 2
    assert count_text_tokens("hi, there!") == 1 + 1 + 2 + 1
    assert count_text_tokens("12*(3+4)") == 7
    assert truncate_to_tokens("one two three", 2) == ("one two", True)
    assert truncate_to_tokens("one two", 5) == ("one two", False)
    messages = (ChatMessage.user("cat"),)
    assert count_prompt_tokens(messages) == 2 + 4 + 1


async def test_json_mode_also_wraps_the_summary_of_tool_results() -> None:
    call = ToolCall(id="call_1", name="time.now", arguments={})
    result = await LocalProvider().complete(
        _call(
            ChatMessage.user("what time is it"),
            ChatMessage.assistant(None, (call,)),
            ChatMessage.tool("call_1", '{"now": "2030-01-01T12:00:00Z"}'),
            response_format="json",
        )
    )
    assert result.tool_calls == ()
    value = json.loads(result.content)
    assert "time.now" in value["answer"] and "2030-01-01T12:00:00Z" in value["answer"]
