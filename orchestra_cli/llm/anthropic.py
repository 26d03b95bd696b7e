"""The Anthropic provider: the Messages API through the official SDK.

Retries are ours, not the SDK's (it gets ``max_retries=0``): every retry is
then logged with host, error class and attempts left, honours ``retry-after``
on 429, 529 (overloaded) and 5xx, and stops at once when the task is
cancelled. Library exceptions become orchestra errors here and nowhere else.

Every call streams (the SDK's ``messages.stream``): a long answer is never cut
by a request timeout, usage comes from the stream's events, and a cancel or a
task's time-out closes the stream within ``aio.CANCEL_POLL_SECONDS`` — the call
is then charged for what it had used (``TaskCancelled.usage``). Calls run on
one event loop (``AsyncAnthropic`` over aiohttp, orchestra_cli/aio.py) whichever
thread makes them, so an agent's hundreds of slots share one connection pool. Requests put
the stable parts first with ``cache_control`` breakpoints after them (tools and
system, then the tree's shared context), never force a tool, and ask for
structured answers through JSON outputs (``output_config.format``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, cast

from orchestra_cli.aio import SHARED, Interrupted, watch_task
from orchestra_cli.backoff import Backoff, log_retry, server_delay
from orchestra_cli.blocking import waiting
from orchestra_cli.errors import ExitStatus, LLMAuthError, LLMError, TaskCancelled
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
COUNT_TIMEOUT_SECONDS = 10.0  # counting is quick; a budgeted call should not wait long on it


class _Retry(Exception):
    """One failed attempt that may be retried after ``delay`` (None: our backoff)."""

    def __init__(self, error: LLMError, delay: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.delay = delay


MAX_CONNECTIONS = 65_536  # every call in flight keeps its own connection, kept alive after


def _http_client(sdk: Any) -> Any:
    """The SDK's aiohttp-based async client (its ``aiohttp`` extra), or its httpx one.

    Both keep the SDK's timeouts and honour proxy variables; the connection limit is
    raised so that an agent's slots never queue for a connection (the SDK's default
    is 1,000 with 100 kept alive: each call beyond the 100th opened its own). The
    httpx pool does O(its connections) work per request, aiohttp's does not: measured
    at 1,024 in flight, 16 ms of CPU per call against 4."""
    import httpx2

    limits = httpx2.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=None)
    try:
        return sdk.DefaultAioHttpClient(limits=limits)
    except RuntimeError:  # installed without its aiohttp extra
        return sdk.DefaultAsyncHttpxClient(limits=limits)


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
        self.backoff = Backoff(first=backoff_seconds, cap=MAX_BACKOFF_SECONDS)
        # every call runs on one event loop, whichever thread makes it (orchestra_cli/aio.py)
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=0,
            http_client=_http_client(anthropic),
        )
        self._loop = SHARED
        self.base_url = str(self._client.base_url)

    def close(self) -> None:
        """Close the SDK's HTTP connections (the process's loop goes on)."""
        if self._loop.started:
            try:
                self._loop.call(self._client.close)
            except Exception as exc:  # closing is best effort
                log.debug("closing the Anthropic client: %s", exc)

    def check(self, model: str, timeout: float = 10.0) -> dict[str, Any]:
        """The API's description of ``model`` (``GET /v1/models/{id}``, not billed): the
        key, the network, a proxy and TLS in one request. One attempt; an LLMError (one
        line, as a call's would be) when any of them fails."""

        async def ask() -> Any:
            return await self._client.models.retrieve(model, timeout=timeout)

        import anthropic

        try:
            info = self._loop.call(ask)
        except Exception as exc:
            if not isinstance(exc, anthropic.AnthropicError | OSError):  # ours, not the API's
                raise LLMError(
                    f"cannot ask the Anthropic API about model {model!r}: "
                    f"{type(exc).__name__}: {redact(str(exc))}",
                    "check the model name (agent YAML or llm.model)",
                ) from exc
            probe = LLMRequest(system="", prompt="", model=model)
            mapped = self._before_stream(exc, probe)
            if isinstance(mapped, _Retry):  # unreachable, timed out, overloaded: a service down
                mapped.error.exit_status = ExitStatus.UNAVAILABLE
                raise mapped.error from exc
            raise mapped from exc
        return {"id": info.id, "display_name": info.display_name}

    def complete(self, request: LLMRequest) -> LLMResponse:
        """``acomplete``, from a thread other than the loop's (it waits for the answer)."""
        with waiting():  # on a blocking pool's thread, this one is free for others meanwhile
            return self._loop.call(lambda: self.acomplete(request))

    async def acomplete(self, request: LLMRequest) -> LLMResponse:
        """One call, retried on transient failures up to ``max_attempts`` in all; a set
        ``request.cancel`` cancels it (``TaskCancelled``) within ``aio.CANCEL_POLL_SECONDS``."""
        stop_watching = watch_task(request.cancel)
        try:
            for attempt in range(1, self.max_attempts + 1):
                _check_cancel(request.cancel)
                try:
                    return await self._streamed(request)
                except _Retry as retry:
                    left = self.max_attempts - attempt
                    if left == 0:
                        raise retry.error from retry.__cause__
                    delay = self._delay(attempt, retry.delay)
                    log_retry(log, "Anthropic API", self.base_url, retry.error.message, delay, left)
                    try:
                        await asyncio.sleep(delay)
                    except asyncio.CancelledError:
                        _check_cancel(request.cancel, waiting=True)
                        raise
            raise AssertionError("unreachable: the loop returns or raises")
        finally:
            stop_watching()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return server_delay(retry_after, MAX_RETRY_AFTER_SECONDS)
        return self.backoff.next_delay(attempt)

    def count_tokens(self, request: LLMRequest) -> int:
        """The API's count of ``request``'s input (free); an upper bound if it fails."""
        import anthropic

        params = _params(request)
        for key in ("max_tokens", "stream"):
            params.pop(key, None)

        def count() -> Awaitable[Any]:
            return self._client.messages.count_tokens(**params, timeout=COUNT_TIMEOUT_SECONDS)

        try:
            with waiting():  # an API round trip (from a metered call's ledger step)
                counted = self._loop.call(count, request.cancel)
            return int(counted.input_tokens)
        except Interrupted:
            raise TaskCancelled("cancelled while counting the request's tokens") from None
        except anthropic.AnthropicError as exc:
            untrusted = _untrusted_certificate(exc, self.base_url)
            if untrusted is not None:  # the call itself would fail the same way: say so
                raise untrusted from exc
            log.warning(
                "counting tokens at %s failed (%s); reserving an upper bound", self.base_url, exc
            )
            return upper_bound_tokens(request)

    async def _streamed(self, request: LLMRequest) -> LLMResponse:
        """One attempt, on the loop: streamed, so a long output outlives no request
        timeout and a cancel (or the task's time-out) closes the connection mid-answer."""
        stream: Any = None
        try:
            async with self._client.messages.stream(**_params(request)) as stream:
                message = await stream.get_final_message()
        except asyncio.CancelledError:
            _check_cancel(request.cancel, stream)  # ours: say what the call had used
            raise
        except Exception as exc:
            _check_cancel(request.cancel, stream)
            used = streamed_usage(stream)
            if used is not None:  # the answer had begun: it is billed, and not retried here
                raise _broken(exc, used, self.base_url) from exc
            raise self._before_stream(exc, request) from exc
        _check_cancel(request.cancel, stream)
        if message.stop_reason is None:  # the stream ended before message_stop: cut short
            error = LLMError(
                f"the answer from {self.base_url} stopped before its end (no stop reason)",
                "the task is retried; check a proxy between orchestra and the API",
            )
            error.usage = streamed_usage(stream)
            raise error
        return _response(message)

    def _before_stream(self, exc: Exception, request: LLMRequest) -> Exception:
        """The orchestra error for a failure before any of the answer arrived."""
        import anthropic

        if isinstance(exc, anthropic.APITimeoutError):
            err = LLMError(
                f"the Anthropic API at {self.base_url} timed out",
                "raise llm.timeout or try again later",
            )
            return _Retry(err, None)
        untrusted = _untrusted_certificate(exc, self.base_url)
        if untrusted is not None:
            return untrusted
        if isinstance(exc, anthropic.APIConnectionError | OSError) or (
            not isinstance(exc, anthropic.AnthropicError)  # the HTTP client's own, e.g. a reset
        ):
            err = LLMError(
                f"cannot reach the Anthropic API at {self.base_url} ({type(exc).__name__})",
                "check the network, or ANTHROPIC_BASE_URL / llm.base_url",
            )
            return _Retry(err, None)
        if isinstance(exc, anthropic.APIStatusError):
            error = _status_error(exc, request.model)
            if exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500:
                return _Retry(error, _retry_after(exc))
            return error
        return LLMError(f"the Anthropic SDK failed: {redact(str(exc))}", "see the log with -v")


# OpenSSL's verify codes whose cure is not another CA (X509_V_ERR_*)
_CERT_HINTS = {
    62: "the certificate names another host: check llm.base_url / ANTHROPIC_BASE_URL",
    64: "the certificate names another address: check llm.base_url / ANTHROPIC_BASE_URL",
    10: "the server's certificate has expired, or this machine's clock is wrong",
    9: "the server's certificate is not valid yet, or this machine's clock is wrong",
}


def _untrusted_certificate(exc: BaseException, base_url: str) -> LLMError | None:
    """The error to report if ``exc`` came from a server certificate that failed
    verification (the SDK wraps the ``ssl`` error in its HTTP client's, then in its own):
    configuration, not weather, so neither the call nor the task is retried."""
    import ssl

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # (aiohttp's own error is one too, without the details: its cause has them)
        if isinstance(current, ssl.SSLCertVerificationError) and (
            getattr(current, "verify_message", None) or current.__cause__ is None
        ):
            reason = str(getattr(current, "verify_message", "") or "certificate verify failed")
            hint = _CERT_HINTS.get(getattr(current, "verify_code", 0)) or (
                "behind a proxy that inspects TLS, set SSL_CERT_FILE to a PEM bundle "
                "holding its CA (it replaces the system's CAs for these calls)"
            )
            error = LLMError(
                f"the TLS certificate of the Anthropic API at {base_url} does not verify "
                f"({reason})",
                hint,
            )
            error.retryable = False
            return error
        current = current.__cause__ or current.__context__
    return None


def _broken(exc: Exception, used: Usage, base_url: str) -> LLMError:
    """A stream that broke off (a dropped connection, an error event such as
    ``overloaded_error`` after the 200): charged for what it had streamed, and retried as
    a task (a new call reserves its own worst case) rather than inside this one."""
    kind = ""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        kind = str((body.get("error") or {}).get("type") or "")
    what = kind or type(exc).__name__
    error = LLMError(
        f"the answer from {base_url} broke off ({what}) after it had begun",
        "the task is retried; a call is charged for what it had streamed",
    )
    error.retryable = kind not in ("invalid_request_error", "authentication_error")
    error.usage = used
    return error


def streamed_usage(stream: Any) -> Usage | None:
    """What a stream that stopped early had used, or None if none of it arrived.

    ``message_start`` reports the input and 1 output token; the real output count only
    comes with the last event. So the output is bounded from what was streamed: no
    token is shorter than a byte."""
    if stream is None:
        return None
    try:
        snapshot = stream.current_message_snapshot
    except Exception:  # no message_start yet: nothing was billed
        return None
    used = _usage(snapshot.usage)
    streamed = 0
    for block in snapshot.content:
        if block.type == "text":
            streamed += len(block.text.encode())
        elif block.type == "thinking":
            streamed += len(block.thinking.encode())
        elif block.type == "tool_use":
            streamed += len(str(block.input).encode())
    return used.model_copy(update={"output_tokens": max(used.output_tokens, streamed)})


def upper_bound_tokens(request: LLMRequest) -> int:
    """No tokenizer makes more tokens than UTF-8 bytes: a safe input estimate."""
    return len(request.as_text().encode()) + 16 * (2 + len(request.followups))


def _check_cancel(
    cancel: threading.Event | None, stream: Any = None, *, waiting: bool = False
) -> None:
    """Raise TaskCancelled, with what a stopped stream had used, once ``cancel`` is set."""
    if cancel is None or not cancel.is_set():
        return
    during = "waiting to retry the model call" if waiting else "calling the model"
    error = TaskCancelled(f"cancelled while {during}")
    error.usage = streamed_usage(stream)
    raise error


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
    if turn.blocks:  # the model's own content, thinking signatures and all
        return [dict(b) for b in turn.blocks]
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
    """The Messages API request: stable parts first, with cache breakpoints after them."""
    import anthropic

    cached = {"type": "ephemeral"}
    first: str | list[dict[str, Any]] = request.prompt
    if request.prompt_prefix:  # the tree's shared context, then this step
        first = [
            {"type": "text", "text": request.prompt_prefix, "cache_control": cached},
            {"type": "text", "text": request.prompt},
        ]
    messages: list[dict[str, Any]] = [{"role": "user", "content": first}]
    messages += [{"role": t.role, "content": _turn_blocks(t)} for t in request.followups]
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        # no temperature and no tool_choice: current models take no sampling
        # parameters and answer forced tool use with a 400 (tool_choice stays auto)
        "messages": messages,
    }
    if request.system:  # tools come before it in the prefix: this breakpoint covers both
        params["system"] = [{"type": "text", "text": request.system, "cache_control": cached}]
    if request.tools:
        params["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.input_schema}
            | ({"strict": True} if t.strict else {})
            for t in request.tools
        ]
    config: dict[str, Any] = {}
    if request.output_schema is not None:
        schema = anthropic.transform_schema(request.output_schema)
        config["format"] = {"type": "json_schema", "schema": schema}
    if request.effort:
        config["effort"] = request.effort
    if config:
        params["output_config"] = config
    return params


def _usage(u: Any) -> Usage:
    return Usage(
        calls=1,
        input_tokens=u.input_tokens or 0,
        output_tokens=u.output_tokens or 0,
        cache_read_tokens=u.cache_read_input_tokens or 0,
        cache_write_tokens=u.cache_creation_input_tokens or 0,
    )


def _response(message: Message) -> LLMResponse:
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[ToolCall] = []
    for block in message.content:
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "thinking":
            thoughts.append(block.thinking)
        elif block.type == "tool_use":
            calls.append(ToolCall(id=block.id, name=block.name, input=block.input))
    return LLMResponse(
        text="".join(texts),
        model=message.model,
        provider=AnthropicProvider.name,
        usage=_usage(message.usage),
        stop_reason=cast(str, message.stop_reason or "end_turn"),
        tool_calls=calls,
        blocks=[_plain(b.model_dump(mode="json", exclude_none=True)) for b in message.content],
        thinking="\n".join(t for t in thoughts if t),
    )


def _plain(block: dict[str, Any]) -> dict[str, Any]:
    """A content block as the API takes it back (the SDK's parse-only fields dropped)."""
    block.pop("parsed_output", None)
    if block.get("type") == "text" and not block.get("citations"):
        block.pop("citations", None)
    return block
