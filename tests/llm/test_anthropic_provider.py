"""The Anthropic provider against a local Messages API server, through the real SDK."""

from __future__ import annotations

import logging
import time

import pytest

from orchestra_cli.errors import LLMAuthError, LLMError
from orchestra_cli.llm.anthropic import AnthropicProvider
from orchestra_cli.llm.base import LLMRequest
from tests.llm.fake_anthropic import FakeAnthropic, error, text


def provider(fake: FakeAnthropic, key: str | None = None, attempts: int = 4) -> AnthropicProvider:
    return AnthropicProvider(
        key or fake.api_key, base_url=fake.url, max_attempts=attempts, backoff_seconds=0.01
    )


def request() -> LLMRequest:
    return LLMRequest(system="be brief", prompt="say hi", model="claude-sonnet-5-5")


def test_text_reply_becomes_a_response_with_tokens_including_cache(fake: FakeAnthropic) -> None:
    usage = {
        "input_tokens": 12,
        "output_tokens": 7,
        "cache_read_input_tokens": 3,
        "cache_creation_input_tokens": 4,
    }
    fake.script(text("hi there", usage=usage))
    response = provider(fake).complete(request())
    assert response.text == "hi there"
    assert response.stop_reason == "end_turn"
    assert response.provider == "anthropic"
    u = response.usage
    assert (u.calls, u.input_tokens, u.output_tokens) == (1, 12, 7)
    assert (u.cache_read_tokens, u.cache_write_tokens) == (3, 4)
    sent = fake.requests[0]["body"]
    assert sent["stream"] is True  # every call streams
    assert sent["system"] == [
        {"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}
    ]
    assert sent["messages"] == [{"role": "user", "content": "say hi"}]
    assert "tool_choice" not in sent and "temperature" not in sent


def test_rate_limit_waits_out_retry_after_then_succeeds(
    fake: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    fake.script(error(429, "slow down", retry_after="1"), text("ok"))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="orchestra_cli.llm.anthropic"):
        response = provider(fake).complete(request())
    assert response.text == "ok"
    assert time.monotonic() - started >= 1.0
    assert len(fake.requests) == 2
    retry_lines = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retry_lines) == 1
    assert "429 rate_limit_error" in retry_lines[0] and "3 attempts left" in retry_lines[0]


def test_overloaded_529_is_retried_then_succeeds(fake: FakeAnthropic) -> None:
    fake.script(error(529, "Overloaded", retry_after="0"), error(500), text("done"))
    assert provider(fake).complete(request()).text == "done"
    assert len(fake.requests) == 3


def test_persistent_server_errors_stop_after_the_bounded_attempts(fake: FakeAnthropic) -> None:
    fake.script(*[error(500, "boom")] * 5)
    with pytest.raises(LLMError, match="500 api_error"):
        provider(fake, attempts=3).complete(request())
    assert len(fake.requests) == 3


def test_auth_error_is_one_line_naming_the_secret_and_never_the_key(fake: FakeAnthropic) -> None:
    wrong = "sk-ant-wrong-key-123456789"
    with pytest.raises(LLMAuthError) as caught:
        provider(fake, key=wrong).complete(request())
    message = str(caught.value)
    assert "ANTHROPIC_API_KEY" in message
    assert "401" in message and "\n" not in message
    assert wrong not in message
    assert caught.value.retryable is False
    assert len(fake.requests) == 1  # an auth error is not retried


def test_bad_request_is_not_retried(fake: FakeAnthropic) -> None:
    fake.script(error(400, "max_tokens: too large"))
    with pytest.raises(LLMError, match="400 invalid_request_error: max_tokens: too large"):
        provider(fake).complete(request())
    assert len(fake.requests) == 1


def test_unreachable_api_is_an_orchestra_error_naming_the_url() -> None:
    dead = AnthropicProvider(
        "sk-ant-x-000000000", base_url="http://127.0.0.1:9", max_attempts=2, backoff_seconds=0
    )
    with pytest.raises(LLMError, match=r"cannot reach the Anthropic API at http://127\.0\.0\.1:9"):
        dead.complete(request())
