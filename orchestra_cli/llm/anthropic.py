"""The Anthropic provider: the Messages API through the official SDK.

Retries are ours, not the SDK's (it gets ``max_retries=0``): every retry is
then logged with host, error class and attempts left, honours ``retry-after``
on 429, 529 (overloaded) and 5xx, and stops at once when the task is
cancelled. Library exceptions become orchestra errors here and nowhere else.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any, cast

from orchestra_cli.errors import LLMAuthError, LLMError, TaskCancelled
from orchestra_cli.llm.base import LLMRequest, LLMResponse, ToolCall, Turn
from orchestra_cli.logs import redact, register_secret
from orchestra_cli.models import Usage

if TYPE_CHECKING:
    import anthropic
    from anthropic.types import Message

log = logging.getLogger(__name__)

API_KEY_SECRET = "ANTHROPIC_API_KEY"
MAX_LLM_ATTEMPTS = 5  # default: the first call and llm.max_retries (4) retries
MAX_RETRY_AFTER_SECONDS = 60.0  # a longer retry-after is capped, not obeyed blindly
MAX_BACKOFF_SECONDS = 30.0
RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every 5xx, 529 (overloaded) included


class _Retry(Exception):
    """One failed attempt that may be retried after ``delay`` (None: our backoff)."""

    def __init__(self, error: LLMError, delay: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.delay = delay


class AnthropicProvider:
    """``LLMProvider`` over ``anthropic.Anthropic().messages.create``."""

    name = "anthropic"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_attempts: int = MAX_LLM_ATTEMPTS,
        backoff_seconds: float = 1.0,
    ) -> None:
        import anthropic

        register_secret(api_key)
        self.max_attempts = max(1, max_attempts)
        self.backoff_seconds = backoff_seconds
        self._client = anthropic.Anthropic(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0
        )
        self.base_url = str(self._client.base_url)

    def close(self) -> None:
        """Close the SDK's HTTP connection pool."""
        self._client.close()

    def complete(self, request: LLMRequest) -> LLMResponse:
        """One call, retried on transient failures up to ``max_attempts`` in all."""
        for attempt in range(1, self.max_attempts + 1):
            _check_cancel(request.cancel)
            try:
                return self._attempt(request)
            except _Retry as retry:
                left = self.max_attempts - attempt
                if left == 0:
                    raise retry.error from retry.__cause__
                delay = self._delay(attempt, retry.delay)
                log.warning(
                    "anthropic %s: %s; retrying in %.1fs (%d attempt%s left)",
                    self.base_url,
                    retry.error.message,
                    delay,
                    left,
                    "" if left == 1 else "s",
                )
                _sleep(delay, request.cancel)
        raise AssertionError("unreachable: the loop returns or raises")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # honour the server's wait, plus a little jitter so clients spread out
            return min(retry_after, MAX_RETRY_AFTER_SECONDS) * (1 + 0.1 * random.random())
        backoff = min(self.backoff_seconds * 2.0 ** (attempt - 1), MAX_BACKOFF_SECONDS)
        return backoff * (0.5 + random.random() / 2)  # "equal jitter"

    def _attempt(self, request: LLMRequest) -> LLMResponse:
        import anthropic

        try:
            message = self._client.messages.create(**_params(request))
        except anthropic.APITimeoutError as exc:
            err = LLMError(
                f"the Anthropic API at {self.base_url} timed out",
                "raise llm.timeout or try again later",
            )
            raise _Retry(err, None) from exc
        except anthropic.APIConnectionError as exc:
            err = LLMError(
                f"cannot reach the Anthropic API at {self.base_url}",
                "check the network, or ANTHROPIC_BASE_URL / llm.base_url",
            )
            raise _Retry(err, None) from exc
        except anthropic.APIStatusError as exc:
            error = _status_error(exc, request.model)
            if exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500:
                raise _Retry(error, _retry_after(exc)) from exc
            raise error from exc
        except anthropic.AnthropicError as exc:
            raise LLMError(
                f"the Anthropic SDK failed: {redact(str(exc))}", "see the log with -v"
            ) from exc
        return _response(message)


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise TaskCancelled("cancelled while calling the model")


def _sleep(delay: float, cancel: threading.Event | None) -> None:
    if cancel is None:
        time.sleep(delay)
    elif cancel.wait(delay):
        raise TaskCancelled("cancelled while waiting to retry the model call")


def _retry_after(exc: anthropic.APIStatusError) -> float | None:
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue  # an HTTP date: fall back to our own backoff
    return None


def _status_error(exc: anthropic.APIStatusError, model: str) -> LLMError:
    """The orchestra error for an HTTP error from the API (one line, no secrets)."""
    status = exc.status_code
    kind = exc.type or "error"
    detail = redact(exc.api_message or "")[:200].replace("\n", " ")
    what = f"Anthropic API error {status} {kind}" + (f": {detail}" if detail else "")
    if status == 401:
        return LLMAuthError(
            f"the Anthropic API rejected the API key ({status} {kind})",
            f"set a valid {API_KEY_SECRET} (environment, .env or Vault)",
        )
    if status == 403:
        return LLMAuthError(what, f"check the permissions of the key in {API_KEY_SECRET}")
    if status == 404:
        error = LLMError(what, f"check the model name {model!r} (agent YAML or llm.model)")
        error.retryable = False
        return error
    if status == 429:
        return LLMError(what, "lower the concurrency or wait for the rate limit to reset")
    if status == 529 or status >= 500:
        return LLMError(what, "the API is overloaded or failing; try again later")
    error = LLMError(what, "check the request settings (model, max_tokens, prompts)")
    error.retryable = status in RETRYABLE_STATUS
    return error


def _turn_blocks(turn: Turn) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [
        {"type": "tool_result", "tool_use_id": r.call_id, "content": r.content}
        | ({"is_error": True} if r.is_error else {})
        for r in turn.tool_results
    ]
    if turn.text:
        blocks.append({"type": "text", "text": turn.text})
    blocks += [
        {"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in turn.tool_calls
    ]
    return blocks


def _params(request: LLMRequest) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": request.prompt}]
    messages += [{"role": t.role, "content": _turn_blocks(t)} for t in request.followups]
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        # no temperature: this SDK's Messages API no longer takes sampling parameters
        "messages": messages,
    }
    if request.system:
        params["system"] = request.system
    if request.tools:
        params["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.input_schema}
            for t in request.tools
        ]
    if request.tool_choice:
        params["tool_choice"] = {"type": "tool", "name": request.tool_choice}
    return params


def _response(message: Message) -> LLMResponse:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in message.content:
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "tool_use":
            calls.append(ToolCall(id=block.id, name=block.name, input=block.input))
    u = message.usage
    usage = Usage(
        calls=1,
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_read_tokens=u.cache_read_input_tokens or 0,
        cache_write_tokens=u.cache_creation_input_tokens or 0,
    )
    stop = cast(str, message.stop_reason or "end_turn")
    if stop == "max_tokens":
        log.warning("model %s stopped at max_tokens; the output is truncated", message.model)
    return LLMResponse(
        text="\n".join(texts),
        model=message.model,
        provider=AnthropicProvider.name,
        usage=usage,
        stop_reason=stop,
        tool_calls=calls,
    )
