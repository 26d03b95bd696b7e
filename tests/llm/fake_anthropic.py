"""A local Messages API server for the real ``anthropic`` SDK.

Speaks ``POST /v1/messages`` closely enough for the SDK: text and tool_use
content blocks, usage with cache tokens, stop reasons, and error bodies
``{"type": "error", "error": {...}}`` with ``retry-after`` headers. Each test
scripts a queue of replies; when the queue is empty ``default`` answers.
Run standalone (``python -m tests.llm.fake_anthropic``) it serves a default
that plans with ``submit_plan`` and answers every other call with text.
"""

from __future__ import annotations

import itertools
import json
import threading
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
_ids = itertools.count(1)


@dataclass
class Reply:
    """One scripted reply: a message (``content``) or an error (``status`` ≥ 400)."""

    content: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    stop_reason: str | None = None
    usage: dict[str, int] = field(default_factory=lambda: {"input_tokens": 10, "output_tokens": 5})
    headers: dict[str, str] = field(default_factory=dict)
    message: str = ""


def text(body: str, **kw: Any) -> Reply:
    return Reply(content=[{"type": "text", "text": body}], stop_reason="end_turn", **kw)


def tool_use(name: str, data: Any, **kw: Any) -> Reply:
    block = {"type": "tool_use", "id": f"toolu_{next(_ids):06d}", "name": name, "input": data}
    return Reply(content=[block], stop_reason="tool_use", **kw)


def error(status: int, message: str = "", retry_after: str | None = None) -> Reply:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return Reply(status=status, headers=headers, message=message or ERROR_TYPES.get(status, ""))


def default_reply(body: dict[str, Any]) -> Reply:
    """A plan (two steps) for planner calls, a text answer for every other call."""
    tools = body.get("tools") or []
    if any(t.get("name") == "submit_plan" for t in tools):
        return tool_use(
            "submit_plan",
            {
                "decompose": True,
                "reason": "design first, then build",
                "subtasks": [
                    {"title": "Design it", "capability": "architecture", "input": "design"},
                    {
                        "title": "Build it",
                        "capability": "code",
                        "input": "build",
                        "depends_on": ["Design it"],
                    },
                ],
            },
            usage={"input_tokens": 100, "output_tokens": 40},
        )
    return text(
        "fake model answer",
        usage={
            "input_tokens": 200,
            "output_tokens": 50,
            "cache_read_input_tokens": 30,
            "cache_creation_input_tokens": 20,
        },
    )


class FakeAnthropic:
    """The server; ``replies`` is the script, ``requests`` what the SDK sent."""

    def __init__(self, api_key: str = "sk-ant-test-key-000000") -> None:
        self.api_key = api_key
        self.replies: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.default: Callable[[dict[str, Any]], Reply] = default_reply
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
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

    def _next(self, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        with self._lock:
            self.requests.append({"body": body, "headers": headers})
            # SDKs send the key as x-api-key or (newer ones) as a bearer token
            bearer = headers.get("authorization", "").removeprefix("Bearer ")
            if self.api_key not in (headers.get("x-api-key"), bearer):
                return error(401, "invalid x-api-key")
            return self.replies.popleft() if self.replies else self.default(body)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.split("?")[0] != "/v1/messages":
                    return self._send(
                        404,
                        {
                            "type": "error",
                            "error": {"type": "not_found_error", "message": self.path},
                        },
                    )
                reply = fake._next(body, {k.lower(): v for k, v in self.headers.items()})
                if reply.status >= 400:
                    kind = ERROR_TYPES.get(reply.status, "api_error")
                    payload = {"type": "error", "error": {"type": kind, "message": reply.message}}
                    return self._send(reply.status, payload, reply.headers)
                usage = {"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
                usage.update(reply.usage)
                message = {
                    "id": f"msg_{next(_ids):06d}",
                    "type": "message",
                    "role": "assistant",
                    "model": body.get("model", "claude-sonnet-5-5"),
                    "content": reply.content,
                    "stop_reason": reply.stop_reason,
                    "stop_sequence": None,
                    "usage": usage,
                }
                return self._send(200, message, reply.headers)

            def _send(
                self, status: int, payload: Any, headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", f"req_{next(_ids):06d}")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def main() -> None:
    """Serve the default replies and print the URL (for manual runs)."""
    fake = FakeAnthropic()
    print(fake.url, flush=True)
    fake.server.serve_forever()


if __name__ == "__main__":
    main()
