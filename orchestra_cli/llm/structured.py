"""Structured output: JSON outputs with a schema, validated, re-asked when invalid.

The request carries the pydantic model's JSON schema as the answer's format
(``LLMRequest.output_schema``: the API's ``output_config.format``), so the
model's constrained decoding produces JSON of that shape — never a forced
tool call, which current models refuse. The text is still parsed and
validated with pydantic (the API does not enforce every keyword: lengths,
cross-field rules), and an answer that does not validate is sent back with
the validation messages, at most ``max_reasks`` times; then
``LLMOutputInvalid`` carries the last raw output. Never an open loop. A
refusal is final (``LLMRefusal``); an answer cut at ``max_tokens`` is re-asked
for a shorter one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from orchestra_cli.errors import LLMOutputInvalid
from orchestra_cli.llm.base import LLMProvider, LLMRequest, LLMResponse, Turn
from orchestra_cli.llm.outcomes import check_final
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


def _check(response: LLMResponse, model: type[M], context: dict[str, Any] | None) -> M | str:
    """The validated value, or what is wrong with the answer."""
    if response.stop_reason == "max_tokens":
        return "the answer was cut off at the output limit; answer again, more briefly"
    try:
        data = json.loads(response.text)
    except ValueError as exc:
        return f"the answer is not valid JSON ({exc})"
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        return f"invalid: {describe_errors(exc)}"


def complete_structured(
    provider: LLMProvider,
    request: LLMRequest,
    model: type[M],
    *,
    schema: dict[str, Any],
    max_reasks: int,
    context: dict[str, Any] | None = None,
) -> Structured[M]:
    """Ask for ``model`` as JSON following ``schema``; re-ask on invalid output."""
    attempts = max_reasks + 1
    req = replace(request, output_schema=schema, followups=[])
    usage = Usage()
    for attempt in range(1, attempts + 1):
        response = provider.complete(req)
        usage = usage + response.usage
        check_final(response, request.model)  # a refusal is final, never re-asked
        checked = _check(response, model, context)
        if not isinstance(checked, str):
            return Structured(value=checked, attempts=attempt, usage=usage, response=response)
        log.warning(
            "structured output from %s %s (attempt %d of %d)",
            response.model,
            checked,
            attempt,
            attempts,
        )
        if attempt == attempts:
            error = LLMOutputInvalid(
                f"the model's structured output was invalid after {attempts} attempt(s): {checked}",
                "adjust the prompt template or raise llm.max_reasks",
            )
            error.raw_output = response.text[:RAW_OUTPUT_CHARS]
            raise error
        reask = Turn(role="user", text=f"That answer is {checked}. Answer again with valid JSON.")
        req = replace(req, followups=[*req.followups, response.as_turn(), reask])
    raise AssertionError("unreachable: the loop returns or raises")
