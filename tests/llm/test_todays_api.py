"""Today's Messages API through the real SDK: stop reasons, thinking, streaming, caching."""

from __future__ import annotations

import threading
import time

import pytest

from orchestra_cli.errors import LLMError, LLMRefusal, LLMTruncated, TaskCancelled
from orchestra_cli.llm.anthropic import AnthropicProvider
from orchestra_cli.llm.base import LLMRequest
from orchestra_cli.llm.outcomes import complete_text
from orchestra_cli.llm.pricing import PRICES_AS_OF, PriceTable
from orchestra_cli.models import Usage
from tests.llm.fake_anthropic import FakeAnthropic, Reply, refusal, text, thinking
from tests.support import wait_until


def provider(fake: FakeAnthropic) -> AnthropicProvider:
    return AnthropicProvider(fake.api_key, base_url=fake.url, max_attempts=2, backoff_seconds=0)


def request(**kw: object) -> LLMRequest:
    values: dict[str, object] = {
        "system": "be brief",
        "prompt": "say hi",
        "model": "claude-sonnet-5-5",
    }
    values.update(kw)
    return LLMRequest(**values)  # type: ignore[arg-type]


def test_the_fake_refuses_forced_tool_use_on_the_default_model_as_the_api_does(
    fake: FakeAnthropic,
) -> None:
    """A request shape the old planner sent: the suite must fail it, as the API does."""
    import anthropic

    client = anthropic.Anthropic(api_key=fake.api_key, base_url=fake.url, max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="forced tool use"):
        client.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "plan"}],
            tools=[{"name": "submit_plan", "input_schema": {"type": "object"}}],
            tool_choice={"type": "tool", "name": "submit_plan"},
        )
    client.close()


def test_a_refusal_is_a_final_error_after_one_call(fake: FakeAnthropic) -> None:
    fake.script(refusal())
    with pytest.raises(LLMRefusal, match="refused the request") as caught:
        complete_text(provider(fake), request(), max_continuations=2)
    assert caught.value.retryable is False
    assert len(fake.requests) == 1


def test_output_cut_at_max_tokens_is_continued_and_joined(fake: FakeAnthropic) -> None:
    fake.script(text("a" * 400), text(" and the rest."))
    response = complete_text(provider(fake), request(max_tokens=50), max_continuations=2)
    assert response.text == "a" * 200 + " and the rest."  # 50 tokens of 4 bytes, then the rest
    assert response.stop_reason == "end_turn"
    assert response.usage.calls == 2
    second = fake.requests[1]["body"]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[1]["content"] == [{"type": "text", "text": "a" * 200}]
    assert "Continue exactly where it stopped" in second[2]["content"][0]["text"]


def test_output_still_cut_after_the_continuations_fails_saying_truncated(
    fake: FakeAnthropic,
) -> None:
    fake.script(*[text("b" * 400)] * 3)
    with pytest.raises(LLMTruncated, match=r"output truncated at max_tokens \(10\)") as caught:
        complete_text(provider(fake), request(max_tokens=10), max_continuations=1)
    assert caught.value.retryable is False
    assert len(fake.requests) == 2


def test_thinking_blocks_are_kept_and_sent_back_unchanged(fake: FakeAnthropic) -> None:
    """The fake checks each thinking block's signature: a rebuilt block would be a 400."""
    cut = Reply(
        content=[thinking("plan the greeting"), {"type": "text", "text": "h" * 100}],
        stop_reason="end_turn",
    )
    fake.script(cut, text("i"))
    response = complete_text(provider(fake), request(max_tokens=5), max_continuations=1)
    assert response.text == "h" * 20 + "i"
    sent_back = fake.requests[1]["body"]["messages"][1]["content"]
    assert sent_back[0]["type"] == "thinking"
    assert sent_back[0]["thinking"] == "plan the greeting" and sent_back[0]["signature"]


def test_effort_goes_in_output_config(fake: FakeAnthropic) -> None:
    provider(fake).complete(request(effort="low"))
    assert fake.requests[0]["body"]["output_config"] == {"effort": "low"}


def test_a_cancel_closes_an_in_flight_stream_within_a_second_and_charges_its_usage(
    fake: FakeAnthropic,
) -> None:
    fake.script(text("slow answer", delay=12))
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(TaskCancelled) as caught:
        provider(fake).complete(request(cancel=cancel))
    stopped = time.monotonic() - started
    assert stopped < 1.5, f"the call ran {stopped:.1f}s after its cancel"
    used = caught.value.usage
    assert isinstance(used, Usage) and used.calls == 1 and used.input_tokens > 0
    # the server sees the connection gone at its next writes (pings every 0.5 s)
    wait_until(lambda: fake.closed_early == 1, timeout=5, what="the server to see the close")


def test_two_siblings_share_the_cached_prefix(fake: FakeAnthropic) -> None:
    """The tree's goal goes first, with a breakpoint after it: the second sibling reads
    the prefix the first one wrote."""
    goal = "Build a todo service. " * 200  # ~1,100 tokens: over the minimum cacheable
    llm = provider(fake)
    first = llm.complete(request(prompt_prefix=goal, prompt="step one: the schema"))
    second = llm.complete(request(prompt_prefix=goal, prompt="step two: the handlers"))
    assert first.usage.cache_write_tokens > 1000 and first.usage.cache_read_tokens == 0
    assert second.usage.cache_read_tokens == first.usage.cache_write_tokens
    assert second.usage.cache_write_tokens == 0
    content = fake.requests[1]["body"]["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": goal, "cache_control": {"type": "ephemeral"}}
    assert content[1] == {"type": "text", "text": "step two: the handlers"}


def test_count_tokens_is_the_apis_count_of_the_same_request(fake: FakeAnthropic) -> None:
    llm = provider(fake)
    req = request(prompt_prefix="shared context " * 10)
    counted = llm.count_tokens(req)
    assert counted == llm.complete(req).usage.input_tokens
    assert len(fake.count_requests) == 1


def test_prices_are_the_published_table_and_an_unknown_model_is_unpriced() -> None:
    table = PriceTable()
    usage = Usage(calls=1, input_tokens=1_000_000, output_tokens=1_000_000)
    assert table.cost("claude-sonnet-5-5", usage) == pytest.approx(12.0)  # $2 in, $10 out
    assert table.cost("claude-opus-5-5", usage) == pytest.approx(24.0)
    short = Usage(calls=1, input_tokens=100_000, output_tokens=1_000_000)  # at the threshold
    assert table.cost("claude-haiku-5-5", short) == pytest.approx(0.01 + 0.5)
    reads = Usage(calls=1, cache_read_tokens=1_000_000)
    assert table.cost("claude-sonnet-5-5", reads) == pytest.approx(0.10)
    assert table.cost("claude-made-up-9", usage) is None
    charged = table.charge("claude-made-up-9", usage)
    assert charged.unpriced_calls == 1 and charged.cost_usd == 0.0
    assert PRICES_AS_OF == "2026-10-24"


def test_haiku_prompts_over_100k_tokens_pay_the_long_prompt_rates() -> None:
    table = PriceTable()
    long = Usage(calls=1, input_tokens=150_000, output_tokens=1_000)
    assert table.cost("claude-haiku-5-5", long) == pytest.approx(
        (150_000 * 0.5 + 1_000 * 2.5) / 1e6
    )


def test_a_server_error_during_a_stream_is_retried(fake: FakeAnthropic) -> None:
    fake.script(Reply(status=529, message="Overloaded", headers={"retry-after": "0"}), text("ok"))
    assert provider(fake).complete(request()).text == "ok"


def test_a_context_window_overflow_is_final(fake: FakeAnthropic) -> None:
    fake.script(Reply(content=[], stop_reason="model_context_window_exceeded"))
    with pytest.raises(LLMError, match="context window") as caught:
        complete_text(provider(fake), request(), max_continuations=2)
    assert caught.value.retryable is False
