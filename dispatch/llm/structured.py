"""Structured output: ask for JSON matching a pydantic model, validate, repair once.

The request gets a system instruction carrying the model's JSON Schema, ``response_format``
``"json"`` and the schema itself (providers that understand it use it), and tools are
switched off (``tool_choice="none"``). The answer is validated with pydantic. If it does
not validate, the model is shown its reply and the validation errors and asked once for a
corrected object; if that fails too, :class:`~dispatch.llm.api.StructuredOutputError`.

Shared by the in-process manager and the gRPC client, which differ only in how one
completion is obtained.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from dispatch.llm.api import ChatMessage, Completion, CompletionRequest, StructuredOutputError

__all__ = ["complete_structured", "extract_json_text", "structured_request", "validation_summary"]

ModelT = TypeVar("ModelT", bound=BaseModel)

_FENCE = re.compile(r"^```(?:json)?\s*\n?(?P<body>.*?)\n?```$", re.DOTALL | re.IGNORECASE)
_MAX_ERRORS = 5
_MAX_ERROR_CHARS = 160

Complete = Callable[[CompletionRequest], Awaitable[Completion]]
Discard = Callable[[CompletionRequest], Awaitable[None]]


def structured_request(request: CompletionRequest, model: type[BaseModel]) -> CompletionRequest:
    """``request`` turned into a request for one JSON object matching ``model``."""
    schema = model.model_json_schema()
    instruction = ChatMessage.system(
        "Reply with only one JSON object, without prose or code fences, that validates "
        "against this JSON Schema:\n" + json.dumps(schema, sort_keys=True)
    )
    return request.model_copy(
        update={
            "messages": (instruction, *request.messages),
            "response_format": "json",
            "response_schema": schema,
            "tool_choice": "none",
        }
    )


def extract_json_text(content: str) -> str:
    """The JSON part of a reply: without surrounding whitespace or a Markdown code fence."""
    text = content.strip()
    fenced = _FENCE.match(text)
    return fenced.group("body").strip() if fenced else text


def validation_summary(error: ValidationError) -> tuple[str, ...]:
    """Short ``location: message`` lines; the offending input values are left out."""
    lines = []
    for item in error.errors(include_input=False, include_url=False)[:_MAX_ERRORS]:
        location = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"{location}: {item['msg']}"[:_MAX_ERROR_CHARS])
    return tuple(lines)


def _parse(content: str, model: type[ModelT]) -> ModelT:
    return model.model_validate_json(extract_json_text(content))


async def complete_structured(
    complete: Complete,
    request: CompletionRequest,
    model: type[ModelT],
    *,
    discard: Discard | None = None,
) -> ModelT:
    """Run the structured-output protocol over ``complete``. ``discard`` (optional) is told
    about a request whose answer did not validate, so a cache can forget that answer."""
    first = structured_request(request, model)
    completion = await complete(first)
    try:
        return _parse(completion.content, model)
    except ValidationError as exc:
        errors = validation_summary(exc)
    if discard is not None:
        await discard(first)
    repair = first.model_copy(
        update={
            "messages": (
                *first.messages,
                ChatMessage.assistant(completion.content),
                ChatMessage.user(
                    "That reply did not validate against the schema:\n"
                    + "\n".join(errors)
                    + "\nReply again with only the corrected JSON object."
                ),
            )
        }
    )
    repaired = await complete(repair)
    try:
        return _parse(repaired.content, model)
    except ValidationError as exc:
        errors = validation_summary(exc)
    if discard is not None:
        await discard(repair)
    raise StructuredOutputError(
        f"the model's output did not validate as {model.__name__} after one repair attempt",
        errors=errors,
    )
