"""The package's token count: a deterministic approximation, used everywhere consistently.

Real tokenizers differ per model; budgets only need a count that is cheap, stable and a
fair upper-ish estimate of what a BPE tokenizer would produce. The rule:

* a text is split into *pieces*: runs of word characters (``\\w+``) and single
  non-space, non-word characters (punctuation, symbols);
* a word run of ``n`` characters counts ``ceil(n / 4)`` tokens (BPE vocabularies average
  about four characters of English per token; long words split into several tokens);
* each punctuation or symbol character counts 1 token; whitespace counts nothing;
* every chat message adds :data:`MESSAGE_OVERHEAD` tokens (role and separators), a
  request adds :data:`REPLY_OVERHEAD` (the priming of the reply), a tool call or tool
  specification is counted as its JSON text.

The local provider reports usage with this count, the manager estimates budgets with it,
and it is the fallback when a remote provider omits ``usage``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from dispatch.llm.api import ChatMessage, ToolCall, ToolSpec

__all__ = [
    "CHARS_PER_TOKEN",
    "MESSAGE_OVERHEAD",
    "REPLY_OVERHEAD",
    "count_completion_tokens",
    "count_message_tokens",
    "count_prompt_tokens",
    "count_text_tokens",
    "truncate_to_tokens",
]

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
REPLY_OVERHEAD = 2

_PIECE = re.compile(r"\w+|[^\w\s]")


def _piece_tokens(piece: str) -> int:
    if piece[0].isalnum() or piece[0] == "_":
        return -(-len(piece) // CHARS_PER_TOKEN)
    return 1


def count_text_tokens(text: str) -> int:
    """Tokens of a plain text under the rule in the module docstring."""
    return sum(_piece_tokens(match.group()) for match in _PIECE.finditer(text))


def _tool_call_text(call: ToolCall) -> str:
    return call.name + json.dumps(call.arguments, sort_keys=True, ensure_ascii=False)


def count_message_tokens(message: ChatMessage) -> int:
    """Tokens of one chat message, its overhead and any tool calls it carries."""
    total = MESSAGE_OVERHEAD + count_text_tokens(message.content or "")
    for call in message.tool_calls:
        total += count_text_tokens(_tool_call_text(call))
    if message.name:
        total += count_text_tokens(message.name)
    return total


def count_prompt_tokens(messages: Iterable[ChatMessage], tools: Iterable[ToolSpec] = ()) -> int:
    """Tokens of a whole request: its messages, the tool specifications, reply priming."""
    total = REPLY_OVERHEAD + sum(count_message_tokens(message) for message in messages)
    for tool in tools:
        text = json.dumps(tool.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        total += count_text_tokens(text)
    return total


def count_completion_tokens(content: str, tool_calls: Iterable[ToolCall] = ()) -> int:
    """Tokens of an answer: its text plus each tool call's name and JSON arguments."""
    return count_text_tokens(content) + sum(
        count_text_tokens(_tool_call_text(call)) for call in tool_calls
    )


def truncate_to_tokens(text: str, limit: int) -> tuple[str, bool]:
    """The longest prefix of ``text`` whose count is at most ``limit``, ending at a piece
    boundary, and whether anything was cut."""
    used = 0
    end = 0
    for match in _PIECE.finditer(text):
        cost = _piece_tokens(match.group())
        if used + cost > limit:
            return text[:end], True
        used += cost
        end = match.end()
    return text, False
