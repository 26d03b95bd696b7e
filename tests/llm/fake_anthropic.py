"""A local Messages API server for the real ``anthropic`` SDK, faithful to today's API.

It answers ``POST /v1/messages`` (plain JSON, or server-sent events when the
request says ``stream: true``) and ``POST /v1/messages/count_tokens``, and
checks requests the way the API does for current models:

- forced tool use (``tool_choice`` of type ``tool`` or ``any``) is a 400 on the
  models that reject it (Claude Sonnet 5.5, Opus 5.5, Fable 5.1);
- ``thinking: {"type": "disabled"}`` is a 400 on Sonnet 5.5 (use ``between_tools``);
- an assistant message last in ``messages`` (a prefill) is a 400 on those models;
- thinking blocks sent back must be unchanged (the signature is checked);
- each ``tool_result`` answers a ``tool_use`` of the message just before it, and
  each ``tool_use`` not last gets its ``tool_result`` in the next message;
- ``max_tokens`` is honoured: a longer scripted output is cut and stops with
  ``max_tokens``;
- prompt caching: each ``cache_control`` breakpoint's prefix is written to a
  cache on first sight and read from it after (when it is at least the
  model's minimum cacheable length), and usage reports both.

Tokens are counted as ⌈UTF-8 bytes / 4⌉ of the request's text (system, tools,
messages), the same for ``count_tokens`` and the message's usage. Each test
scripts a queue of replies; when the queue is empty ``default`` answers.
Run standalone (``python -m tests.llm.fake_anthropic``) it serves the defaults.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
# GET /v1/models/{id}: what the fake describes (any other id is a 404, as on the API)
MODELS = {
    "claude-sonnet-5-5": ("Claude Sonnet 5.5", "2026-10-14T00:00:00Z"),
    "claude-opus-5-5": ("Claude Opus 5.5", "2026-10-14T00:00:00Z"),
    "claude-fable-5-1": ("Claude Fable 5.1", "2026-08-05T00:00:00Z"),
    "claude-haiku-5-5": ("Claude Haiku 5.5", "2026-10-14T00:00:00Z"),
}
NO_FORCED_TOOLS = ("claude-sonnet-5-5", "claude-opus-5-5", "claude-fable-5-1")
MIN_CACHEABLE = {"claude-sonnet-5-5": 512}  # tokens; other models 1,024
DEFAULT_MIN_CACHEABLE = 1024
_ids = itertools.count(1)
_SECRET = b"fake-anthropic-thinking"


@dataclass
class Reply:
    """One scripted reply: a message (``content``) or an error (``status`` ≥ 400).

    ``usage`` None: counted from the request and the content. ``delay``: seconds
    before the answer starts; ``chunk_delay``: between streamed deltas. ``hold``: the
    answer waits (up to a minute) until the test sets it, the request already on record.
    """

    content: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    stop_reason: str | None = None
    usage: dict[str, int] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    message: str = ""
    delay: float = 0.0
    chunk_delay: float = 0.0
    hold: threading.Event | None = None


def text(body: str, **kw: Any) -> Reply:
    return Reply(content=[{"type": "text", "text": body}], stop_reason="end_turn", **kw)


def tool_use(name: str, data: Any, *, say: str = "", **kw: Any) -> Reply:
    block = {"type": "tool_use", "id": f"toolu_{next(_ids):06d}", "name": name, "input": data}
    content = ([{"type": "text", "text": say}] if say else []) + [block]
    return Reply(content=content, stop_reason="tool_use", **kw)


def thinking(summary: str) -> dict[str, Any]:
    """A signed thinking block (the API's signature stands for the full thought)."""
    return {"type": "thinking", "thinking": summary, "signature": _sign(summary)}


def refusal(**kw: Any) -> Reply:
    return Reply(content=[], stop_reason="refusal", **kw)


def error(status: int, message: str = "", retry_after: str | None = None) -> Reply:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return Reply(status=status, headers=headers, message=message or ERROR_TYPES.get(status, ""))


def tokens(text_: str) -> int:
    return math.ceil(len(text_.encode()) / 4)


def _sign(summary: str) -> str:
    return hashlib.sha256(_SECRET + summary.encode()).hexdigest()


def _schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = (body.get("output_config") or {}).get("format") or {}
    return fmt.get("schema") if fmt.get("type") == "json_schema" else None


def _capabilities(schema: dict[str, Any]) -> list[str]:
    """The capability enum a plan schema carries (JSON outputs keep plans routable)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            cap = (node.get("properties") or {}).get("capability") or {}
            for option in [cap, *(cap.get("anyOf") or [])]:
                found.extend(v for v in option.get("enum", []) if v not in found)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return found


def default_reply(body: dict[str, Any]) -> Reply:
    """A two-step plan for a plan schema, a text answer for every other call
    (usage counted from the request, as the API bills it)."""
    schema = _schema_of(body)
    if schema is not None and "subtasks" in json.dumps(schema):
        caps = _capabilities(schema) or ["architecture", "code"]
        first, second = ("architecture", "code") if "architecture" in caps else (caps[0], caps[-1])
        plan = {
            "decompose": True,
            "reason": "design first, then build",
            "capability": None,
            "subtasks": [
                {"title": "Design it", "capability": first, "input": "design", "depends_on": []},
                {
                    "title": "Build it",
                    "capability": second,
                    "input": "build",
                    "depends_on": ["Design it"],
                },
            ],
        }
        return text(json.dumps(plan))
    return text("fake model answer")


def _key(content: Any) -> str:
    """A message content's identity, whatever the order of its keys."""
    return json.dumps(content, sort_keys=True)


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind == "thinking":
        return str(block.get("thinking", ""))
    if kind == "tool_use":
        return block.get("name", "") + json.dumps(block.get("input"), sort_keys=True)
    if kind == "tool_result":
        content = block.get("content", "")
        return content if isinstance(content, str) else "".join(map(_block_text, content))
    return ""


def _segments(body: dict[str, Any]) -> list[tuple[str, bool]]:
    """The request's text in the API's prefix order (tools, system, messages),
    each piece with whether a cache breakpoint follows it."""
    out: list[tuple[str, bool]] = []
    for tool in body.get("tools") or []:
        out.append((json.dumps(tool, sort_keys=True), "cache_control" in tool))
    system = body.get("system") or []
    for block in [system] if isinstance(system, str) else system:
        out.append((_block_text(block), isinstance(block, dict) and "cache_control" in block))
    for message in body.get("messages") or []:
        content = message.get("content")
        for block in [content] if isinstance(content, str) else content or []:
            out.append((_block_text(block), isinstance(block, dict) and "cache_control" in block))
    return out


def _tool_pairing(messages: list[dict[str, Any]]) -> str | None:
    """The API's rule: each tool_result answers a tool_use of the message just before
    it, and each tool_use gets its tool_result in the next message."""
    before: set[str] = set()
    for index, message in enumerate(messages):
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        answered = {str(b.get("tool_use_id")) for b in blocks if b.get("type") == "tool_result"}
        if answered - before:
            return (
                f"messages.{index}: unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{', '.join(sorted(answered - before))}. Each `tool_result` block "
                "must have a corresponding `tool_use` block in the previous message."
            )
        if before - answered:
            return (
                f"messages.{index - 1}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(sorted(before - answered))}. Each `tool_use` "
                "block must have a corresponding `tool_result` block in the next message."
            )
        calls = {str(b.get("id")) for b in blocks if b.get("type") == "tool_use"}
        before = calls if message.get("role") == "assistant" else set()
    return None


class FakeAnthropic:
    """The server; ``replies`` is the script, ``requests`` what the SDK sent."""

    def __init__(self, api_key: str = "sk-ant-test-key-000000") -> None:
        self.api_key = api_key
        self.replies: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.count_requests: list[dict[str, Any]] = []
        self.model_requests: list[str] = []  # GET /v1/models/{id} paths
        self.default: Callable[[dict[str, Any]], Reply] = default_reply
        self.cache: set[str] = set()
        self.closed_early = 0  # streams the client closed before their end
        self.billed: list[dict[str, int]] = []  # the usage of every message answered
        self.paused: set[str] = set()  # the content of turns answered with pause_turn
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    # -- the API's rules -------------------------------------------------------
    def _authorized(self, headers: dict[str, str]) -> bool:
        # SDKs send the key as x-api-key or (newer ones) as a bearer token
        bearer = headers.get("authorization", "").removeprefix("Bearer ")
        return self.api_key in (headers.get("x-api-key"), bearer)

    def _invalid(self, body: dict[str, Any]) -> str | None:
        model = str(body.get("model", ""))
        strict_model = model.startswith(NO_FORCED_TOOLS)
        choice = (body.get("tool_choice") or {}).get("type")
        if strict_model and choice in ("tool", "any"):
            return (
                f"tool_choice: forced tool use (type {choice!r}) is not supported on {model}; "
                "use tool_choice auto with strict tools, or structured outputs"
            )
        if (
            model.startswith("claude-sonnet-5-5")
            and (body.get("thinking") or {}).get("type") == "disabled"
        ):
            return "thinking: type 'disabled' is not supported on this model; use 'between_tools'"
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        # only a turn the API paused (pause_turn) may go back last, to be resumed
        if (
            strict_model
            and last.get("role") == "assistant"
            and (_key(last.get("content")) not in self.paused)
        ):
            return "messages: prefilling the assistant message is not supported on this model"
        for message in messages:
            content = message.get("content")
            for block in content if isinstance(content, list) else []:
                if block.get("type") == "thinking" and block.get("signature") != _sign(
                    block.get("thinking", "")
                ):
                    return "messages: a thinking block was changed; send it back unchanged"
        problem = _tool_pairing(messages)
        if problem is not None:
            return problem
        if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
            return "max_tokens: an integer of at least 1 is required"
        return None

    def count(self, body: dict[str, Any]) -> int:
        return sum(tokens(piece) for piece, _ in _segments(body))

    def _cache_usage(self, body: dict[str, Any]) -> tuple[int, int, int]:
        """(uncached input, cache writes, cache reads) for this request."""
        model = str(body.get("model", ""))
        minimum = next((v for k, v in MIN_CACHEABLE.items() if model.startswith(k)), 1024)
        total = written = read = 0
        digest = hashlib.sha256(model.encode())
        for piece, breakpoint in _segments(body):
            total += tokens(piece)
            digest.update(piece.encode() + b"\0")
            if not breakpoint or total - written - read < 1 or total < minimum:
                continue
            key = digest.hexdigest()
            with self._lock:
                hit = key in self.cache
                self.cache.add(key)
            if hit:
                read, written = total, 0
            else:
                written = total - read
        return total - written - read, written, read

    def _message(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        content = json.loads(json.dumps(reply.content))  # the script stays reusable
        stop = reply.stop_reason
        out_tokens = sum(tokens(_block_text(b)) for b in content)
        limit = body["max_tokens"]
        if reply.usage is not None:
            out_tokens = reply.usage.get("output_tokens", out_tokens)
        if out_tokens > limit:  # honour max_tokens: cut the last text and say so
            for block in content:
                if block.get("type") == "text":
                    block["text"] = block["text"][: max(1, limit * 4)]
            content = [b for b in content if b.get("type") != "tool_use"]
            out_tokens, stop = limit, "max_tokens"
        fresh, written, read = self._cache_usage(body)
        usage = {
            "input_tokens": fresh,
            "output_tokens": out_tokens,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
        }
        if reply.usage is not None:
            usage.update({k: v for k, v in reply.usage.items() if k != "output_tokens"})
        with self._lock:
            self.billed.append(usage)
            if stop == "pause_turn":
                self.paused.add(_key(content))
        return {
            "id": f"msg_{next(_ids):06d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-sonnet-5-5"),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }

    def _next(self, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        with self._lock:
            self.requests.append({"body": body, "headers": headers})
            if not self._authorized(headers):
                return error(401, "invalid x-api-key")
        problem = self._invalid(body)
        if problem is not None:
            return error(400, problem)
        with self._lock:
            return self.replies.popleft() if self.replies else self.default(body)


class _Handler(BaseHTTPRequestHandler):
    """One request; ``server.fake`` is the FakeAnthropic it belongs to."""

    protocol_version = "HTTP/1.1"

    @property
    def fake(self) -> FakeAnthropic:
        return self.server.fake  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = self.path.split("?")[0]
        with self.fake._lock:
            self.fake.model_requests.append(path)
        if not path.startswith("/v1/models/"):
            return self._error(404, "not_found_error", self.path)
        if not self.fake._authorized(headers):
            return self._error(401, "authentication_error", "invalid x-api-key")
        model = path.removeprefix("/v1/models/")
        if model not in MODELS:
            return self._error(404, "not_found_error", f"model: {model}")
        name, released = MODELS[model]
        info = {"type": "model", "id": model, "display_name": name, "created_at": released}
        return self._send(200, info | {"max_input_tokens": 1_000_000, "max_tokens": 128_000})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = self.path.split("?")[0]
        if path == "/v1/messages/count_tokens":
            return self._count(body, headers)
        if path != "/v1/messages":
            return self._error(404, "not_found_error", self.path)
        reply = self.fake._next(body, headers)
        if reply.hold is not None:
            reply.hold.wait(60)
        if reply.delay and not body.get("stream"):
            time.sleep(reply.delay)
        if reply.status >= 400:
            kind = ERROR_TYPES.get(reply.status, "api_error")
            return self._error(reply.status, kind, reply.message, reply.headers)
        message = self.fake._message(body, reply)
        if body.get("stream"):
            return self._stream(message, reply)
        return self._send(200, message, reply.headers)

    def _count(self, body: dict[str, Any], headers: dict[str, str]) -> None:
        with self.fake._lock:
            self.fake.count_requests.append(body)
        if not self.fake._authorized(headers):
            return self._error(401, "authentication_error", "invalid x-api-key")
        return self._send(200, {"input_tokens": self.fake.count(body)})

    def _error(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        payload = {"type": "error", "error": {"type": kind, "message": message}}
        self._send(status, payload, headers)

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_{next(_ids):06d}")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, message: dict[str, Any], reply: Reply) -> None:
        self.close_connection = True
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("request-id", f"req_{next(_ids):06d}")
        self.send_header("connection", "close")
        self.end_headers()
        try:
            self._events(message, reply)
        except (BrokenPipeError, ConnectionResetError):
            with self.fake._lock:
                self.fake.closed_early += 1

    def _emit(self, event: str, data: dict[str, Any], pause: float = 0.0) -> None:
        if pause:
            time.sleep(pause)
        self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()

    def _events(self, message: dict[str, Any], reply: Reply) -> None:
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {**usage, "output_tokens": 1}
        self._emit("message_start", {"type": "message_start", "message": start})
        waited = 0.0
        while waited < reply.delay:  # a model thinking: pings keep the line alive
            step = min(0.5, reply.delay - waited)
            self._emit("ping", {"type": "ping"}, step)
            waited += step
        for index, block in enumerate(message["content"]):
            self._block(index, block, reply.chunk_delay)
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
        self._emit(
            "message_delta",
            {
                "type": "message_delta",
                "delta": delta,
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        self._emit("message_stop", {"type": "message_stop"})

    def _block(self, index: int, block: dict[str, Any], pause: float) -> None:
        kind = block["type"]
        empty: dict[str, Any] = {
            "text": {"type": "text", "text": ""},
            "thinking": {"type": "thinking", "thinking": "", "signature": ""},
            "tool_use": {**block, "input": {}},
        }[kind]
        self._emit(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": empty},
        )
        if kind == "text":
            body = block["text"]
            pieces = [body[i : i + 16] for i in range(0, len(body), 16)] or [""]
            deltas = [{"type": "text_delta", "text": p} for p in pieces]
        elif kind == "thinking":
            deltas = [
                {"type": "thinking_delta", "thinking": block["thinking"]},
                {"type": "signature_delta", "signature": block["signature"]},
            ]
        else:
            raw = json.dumps(block["input"])
            deltas = [
                {"type": "input_json_delta", "partial_json": raw[i : i + 16]}
                for i in range(0, len(raw), 16)
            ]
        for delta in deltas:
            self._emit(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
                pause,
            )
        self._emit("content_block_stop", {"type": "content_block_stop", "index": index})


def main() -> None:
    """Serve the default replies and print the URL (for manual runs)."""
    fake = FakeAnthropic()
    print(fake.url, flush=True)
    fake.server.serve_forever()


if __name__ == "__main__":
    main()
