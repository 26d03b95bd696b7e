"""The bench's Messages API: answers every call after a fixed delay, scripts a tool loop.

A separate process (``python -m bench.endpoint --delay 0.5 --turns 6``) on
loopback, asyncio on one thread (uvloop when installed), HTTP/1.1 keep-alive,
so hundreds of calls in flight cost it a coroutine each, not a thread. It
prints its URL on stdout once it listens.

- ``POST /v1/messages``: plain JSON, or server-sent events when the request says
  ``stream: true`` (the real API's event sequence — message_start,
  content_block_start/delta/stop, message_delta, message_stop — in one chunk
  once the delay is over, chunked transfer encoding so the connection is kept).
- Turn k of a conversation is 1 + the assistant messages it carries, so the
  server keeps no state: while the request offers tools and k < ``--turns`` it
  answers with a ``tool_use`` block for its first tool (stop_reason ``tool_use``;
  each required string property of the tool's schema gets ``k<turn>``), else
  with a text block (``end_turn``). A request without tools is one text answer.
- ``POST /v1/messages/count_tokens``: ⌈request bytes / 4⌉.

The wire shapes follow tests/llm/fake_anthropic.py, which checks the API's
rules for the test suite; this one checks nothing and is built for speed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import signal
import sys
from typing import Any

try:
    import orjson

    def _loads(raw: bytes) -> Any:
        return orjson.loads(raw)

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value)

except ImportError:  # pragma: no cover - orjson comes with the bench extra

    def _loads(raw: bytes) -> Any:
        return json.loads(raw)

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()


_ids = itertools.count(1)
ANSWER = "done: the lookups are in."


class Endpoint:
    """The server's settings and counters."""

    def __init__(self, delay: float, turns: int) -> None:
        self.delay = delay
        self.turns = turns
        self.calls = 0
        self.streamed = 0

    # -- the answer ----------------------------------------------------------------
    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages") or []
        turn = 1 + sum(1 for m in messages if m.get("role") == "assistant")
        tools = body.get("tools") or []
        usage = {
            "input_tokens": 40 + 20 * len(messages),
            "output_tokens": 12,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        if tools and turn < self.turns:
            tool = tools[0]
            schema = tool.get("input_schema") or {}
            props = schema.get("properties") or {}
            data = {
                key: f"k{turn}"
                for key in schema.get("required") or list(props)[:1]
                if (props.get(key) or {}).get("type", "string") == "string"
            }
            block = {"type": "tool_use", "id": f"toolu_{next(_ids):08d}", "name": tool["name"]}
            content = [block | {"input": data}]
            stop = "tool_use"
        else:
            content = [{"type": "text", "text": ANSWER}]
            stop = "end_turn"
        return {
            "id": f"msg_{next(_ids):08d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-sonnet-5-5"),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }

    # -- HTTP ------------------------------------------------------------------------
    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for header in lines:
                    if ":" in header:
                        key, value = header.split(":", 1)
                        headers[key.strip().lower()] = value.strip()
                raw = await reader.readexactly(int(headers.get("content-length") or 0))
                path = line.split(" ")[1].split("?")[0] if " " in line else ""
                await self.answer(writer, path, raw)
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def answer(self, writer: asyncio.StreamWriter, path: str, raw: bytes) -> None:
        if path == "/v1/messages/count_tokens":
            return await _send(writer, 200, _dumps({"input_tokens": len(raw) // 4 + 1}))
        if path != "/v1/messages":
            error = {"type": "error", "error": {"type": "not_found_error", "message": path}}
            return await _send(writer, 404, _dumps(error))
        body = _loads(raw or b"{}")
        self.calls += 1
        message = self.reply(body)
        if self.delay:
            await asyncio.sleep(self.delay)
        if not body.get("stream"):
            return await _send(writer, 200, _dumps(message))
        self.streamed += 1
        data = _events(message)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\nrequest-id: req_bench\r\n\r\n"
            + f"{len(data):x}\r\n".encode()
            + data
            + b"\r\n0\r\n\r\n"
        )
        await writer.drain()


async def _send(writer: asyncio.StreamWriter, status: int, data: bytes) -> None:
    reason = {200: "OK", 404: "Not Found"}[status]
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\nrequest-id: req_bench\r\n\r\n".encode()
        + data
    )
    await writer.drain()


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _dumps(data) + b"\n\n"


def _events(message: dict[str, Any]) -> bytes:
    """The stream the API sends for ``message``, as one byte string."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    out = [_event("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            empty: dict[str, Any] = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            empty = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": _dumps(block["input"]).decode()}
        out.append(
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": empty},
            )
        )
        out.append(
            _event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        )
        out.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    out.append(
        _event(
            "message_delta",
            {"type": "message_delta", "delta": delta, "usage": {"output_tokens": 12}},
        )
    )
    out.append(_event("message_stop", {"type": "message_stop"}))
    return b"".join(out)


async def main_async(args: argparse.Namespace) -> None:
    endpoint = Endpoint(args.delay, args.turns)
    # backlog: a burst of 1,000+ connects must not overflow the listen queue
    server = await asyncio.start_server(endpoint.serve, "127.0.0.1", args.port, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "calls": endpoint.calls,
                "streamed": endpoint.streamed,
                "cpu_s": usage.ru_utime + usage.ru_stime,
            }
        ),
        file=sys.stderr,
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=1.0, help="seconds before each answer")
    parser.add_argument("--turns", type=int, default=6, help="model turns of a tool loop")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(main_async(args))
    else:
        uvloop.run(main_async(args))


if __name__ == "__main__":
    main()


class Running:
    """The endpoint as a child process of the bench: its URL, pid and CPU."""

    def __init__(self, delay: float, turns: int = 6) -> None:
        import subprocess
        from pathlib import Path

        repo = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.endpoint", "--delay", str(delay), "--turns", str(turns)],
            cwd=repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().decode().strip()
        if not self.url.startswith("http"):
            self.stop()
            raise RuntimeError("the bench endpoint did not start")
        self.delay = delay

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
