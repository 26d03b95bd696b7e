"""Structured output: a pydantic model as a forced tool call, re-asked when invalid.

The model is asked to call one tool whose input schema is the pydantic
model's JSON schema. Input that does not validate is sent back as an error
``tool_result`` with the validation messages, at most ``max_reasks`` times;
then ``LLMOutputInvalid`` carries the last raw output. Never an open loop.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from orchestra_cli.errors import LLMOutputInvalid
from orchestra_cli.llm.base import (
    LLMProvider,
    LLMRequest,
    LLMResponse,
    ToolResult,
    ToolSpec,
    Turn,
)
from orchestra_cli.models import Usage

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
MAX_ERRORS_SHOWN = 5
RAW_OUTPUT_CHARS = 4000


@dataclass
class Structured(Generic[M]):
    """A validated value, the attempts it took, and the usage of all of them."""

    value: M
    attempts: int
    usage: Usage
    response: LLMResponse


def tool_for(model: type[BaseModel], name: str, description: str) -> ToolSpec:
    """A tool whose input schema is ``model``'s JSON schema."""
    return ToolSpec(name=name, description=description, input_schema=model.model_json_schema())


def describe_errors(exc: ValidationError) -> str:
    """Validation errors as ``path: message`` pairs, short enough to send back."""
    parts = []
    for err in exc.errors()[:MAX_ERRORS_SHOWN]:
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - MAX_ERRORS_SHOWN
    if more > 0:
        parts.append(f"…and {more} more")
    return "; ".join(parts)


def _raw(response: LLMResponse) -> str:
    calls = [{"name": c.name, "input": c.input} for c in response.tool_calls]
    text = json.dumps(calls, default=str) if calls else response.text
    return text[:RAW_OUTPUT_CHARS]


def _check(
    response: LLMResponse, model: type[M], tool: str, context: dict[str, Any] | None
) -> tuple[M | None, Turn]:
    """The validated value, or None and the turn that re-asks."""
    call = next((c for c in response.tool_calls if c.name == tool), None)
    if call is None:
        # every tool_use needs a tool_result in the next turn, even a wrong tool's
        wrong = tuple(
            ToolResult(call_id=c.id, content=f"Unknown tool; call {tool}.", is_error=True)
            for c in response.tool_calls
        )
        text = f"Respond only by calling the {tool} tool."
        return None, Turn(role="user", text=text, tool_results=wrong)
    try:
        return model.model_validate(call.input, context=context), Turn(role="user")
    except ValidationError as exc:
        error = describe_errors(exc)
    return None, Turn(
        role="user",
        tool_results=(
            ToolResult(
                call_id=call.id,
                content=f"Invalid input: {error}. Call {tool} again with corrected input.",
                is_error=True,
            ),
        ),
    )


def complete_structured(
    provider: LLMProvider,
    request: LLMRequest,
    model: type[M],
    *,
    tool: ToolSpec,
    max_reasks: int,
    context: dict[str, Any] | None = None,
) -> Structured[M]:
    """Ask for ``model`` through ``tool``; re-ask on invalid output; raise LLMOutputInvalid."""
    attempts = max_reasks + 1
    req = replace(request, tools=[tool], tool_choice=tool.name, followups=[])
    usage = Usage()
    for attempt in range(1, attempts + 1):
        response = provider.complete(req)
        usage = usage + response.usage
        value, reask = _check(response, model, tool.name, context)
        if value is not None:
            return Structured(value=value, attempts=attempt, usage=usage, response=response)
        problem = reask.text or reask.tool_results[0].content
        log.warning(
            "%s output from %s invalid (attempt %d of %d): %s",
            tool.name,
            response.model,
            attempt,
            attempts,
            problem,
        )
        if attempt == attempts:
            error = LLMOutputInvalid(
                f"the model's {tool.name} output was invalid after {attempts} attempt(s): "
                f"{problem}",
                "adjust the prompt template or raise llm.max_reasks",
            )
            error.raw_output = _raw(response)
            raise error
        answer = Turn(role="assistant", text=response.text, tool_calls=tuple(response.tool_calls))
        turns = [answer, reask] if answer.text or answer.tool_calls else [reask]
        req = replace(req, followups=[*req.followups, *turns])
    raise AssertionError("unreachable: the loop returns or raises")
