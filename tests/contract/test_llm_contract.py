"""The LLM seam: one test body, every LLMProvider (offline, and Anthropic on the fake API).

A behaviour a provider cannot express is skipped for that provider alone, with
the reason its case gives (``llm_cases``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from orchestra_cli.errors import LLMError, LLMRefusal, LLMTruncated, TaskCancelled
from orchestra_cli.llm.base import LLMRequest, ToolCall, ToolResult, Turn
from orchestra_cli.llm.outcomes import complete_text
from orchestra_cli.llm.structured import complete_structured
from tests.contract.llm_cases import Case, open_case, request, tools

MAX_TOOL_TURNS = 5


@pytest.fixture(params=["offline", "anthropic"])
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    with open_case(request.param) as opened:
        yield opened


def _require(case: Case, behaviour: str) -> None:
    if behaviour in case.cannot:
        pytest.skip(f"{case.provider.name} cannot express {behaviour}: {case.cannot[behaviour]}")


def _billed_input(case: Case, req: LLMRequest) -> tuple[int, int]:
    """(the input a call was billed for, what ``count_tokens`` said it would be)."""
    counted = case.provider.count_tokens(req)
    usage = case.provider.complete(req).usage
    return usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens, counted


def test_a_text_completion_returns_text_and_counted_usage(case: Case) -> None:
    response = case.provider.complete(request())
    assert response.text.strip() and response.stop_reason == "end_turn"
    assert response.provider == case.provider.name and response.model and not response.tool_calls
    assert response.usage.calls == 1 and response.usage.output_tokens > 0
    billed, counted = _billed_input(case, request())
    assert 0 < billed <= counted  # count_tokens is exact or an upper bound, never less


def test_tool_calls_are_parsed_and_their_results_are_accepted(case: Case) -> None:
    offered = tools("Write", "Bash")
    schemas = {t.name: t.input_schema for t in offered}
    req = request(tools=offered)
    seen: set[str] = set()
    for _ in range(MAX_TOOL_TURNS):
        response = case.provider.complete(req)
        if response.stop_reason != "tool_use":
            break
        assert response.tool_calls, "stop_reason tool_use without a tool call"
        for call in response.tool_calls:
            assert call.id and call.id not in seen and call.name in schemas
            assert set(schemas[call.name].get("required", [])) <= set(call.input)
            seen.add(call.id)
        results = tuple(ToolResult(c.id, f"{c.name} done") for c in response.tool_calls)
        followups = [response.as_turn(), Turn(role="user", tool_results=results)]
        req = replace(req, followups=[*req.followups, *followups])
    assert seen, "no tool was called"
    assert response.stop_reason == "end_turn" and response.text.strip()
    first_input, _ = _billed_input(case, request(tools=offered))
    assert response.usage.input_tokens + response.usage.cache_read_tokens > first_input


@pytest.mark.parametrize(
    "followups",
    [
        [Turn(role="user", tool_results=(ToolResult("toolu_nothing", "a result of no call"),))],
        [
            Turn(role="assistant", tool_calls=(ToolCall("toolu_1", "Bash", {"command": "ls"}),)),
            Turn(role="user", text="no result for the call"),
        ],
    ],
    ids=["a result of no call", "a call without its result"],
)
def test_unpaired_tool_calls_and_results_are_rejected_without_retry(
    case: Case, followups: list[Turn]
) -> None:
    with pytest.raises(LLMError, match="tool") as caught:
        case.provider.complete(request(tools=tools("Bash"), followups=followups))
    assert caught.value.retryable is False and "\n" not in str(caught.value)


class Finding(BaseModel):
    file: str
    line: int


class Review(BaseModel):
    verdict: Literal["approve", "request_changes"]
    findings: list[Finding] = Field(min_length=1)
    note: str | None = None


def test_a_structured_request_returns_a_value_valid_against_the_schema(case: Case) -> None:
    schema = Review.model_json_schema()
    result = complete_structured(
        case.provider, request(purpose="review"), Review, schema=schema, max_reasks=0
    )
    assert isinstance(result.value, Review) and result.attempts == 1
    assert Review.model_validate_json(result.response.text) == result.value
    assert result.usage.calls == 1 and result.usage.output_tokens > 0


def test_a_cancel_set_before_the_call_stops_it(case: Case) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(TaskCancelled):
        case.provider.complete(request(cancel=cancel))


def test_a_cancel_during_a_slow_call_stops_it_within_a_second(case: Case) -> None:
    case.slow(10)
    cancel = threading.Event()
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(TaskCancelled):
        case.provider.complete(request(cancel=cancel))
    timer.cancel()
    took = time.monotonic() - started
    assert took < 1.5, f"the call ran {took - 0.3:.1f}s after its cancel"


def test_an_answer_cut_at_max_tokens_says_so_and_continues_to_the_whole_answer(
    case: Case,
) -> None:
    whole = case.provider.complete(request()).text
    cut = case.provider.complete(request(max_tokens=10))
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens <= 10
    assert whole.startswith(cut.text) and len(cut.text) < len(whole)
    joined = complete_text(case.provider, request(max_tokens=10), max_continuations=20)
    assert joined.text == whole and joined.stop_reason == "end_turn"
    assert joined.usage.calls > 1


def test_an_answer_still_cut_after_the_continuations_is_truncated(case: Case) -> None:
    with pytest.raises(LLMTruncated, match=r"truncated at max_tokens \(5\)") as caught:
        complete_text(case.provider, request(max_tokens=5), max_continuations=1)
    assert caught.value.retryable is False


def test_a_refusal_is_a_final_error(case: Case) -> None:
    _require(case, "refusal")
    case.refuse_next()
    response = case.provider.complete(request())
    assert response.stop_reason == "refusal"
    case.refuse_next()
    with pytest.raises(LLMRefusal) as caught:
        complete_text(case.provider, request(), max_continuations=2)
    assert caught.value.retryable is False
