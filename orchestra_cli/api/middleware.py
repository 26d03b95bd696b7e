"""Pure ASGI middleware around the app: the request body limit and the access log.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``: the limit must act on
``Content-Length`` before anything reads the body (and before routing), and
bound a chunked body as its chunks arrive; the access log must see WebSocket
handshakes too. FastAPI's own ``max_body_size`` checks only once a route reads
the body and answers routes that do not with plain text, not the API's
``{"error", "hint"}``.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("orchestra_cli.api.access")

_TOKEN_PARAM = re.compile(r"((?:^|&)token=)[^&]*")
_MASKED = r"\1***"
MIB = 1 << 20


def body_limit(max_input_bytes: int) -> int:
    """The largest body the API reads: any task text within ``tasks.max_input_bytes``
    fits even when JSON escapes every byte (``\\u00XX``: 6 bytes), with 1 MiB for the
    other fields."""
    return 6 * max_input_bytes + MIB


def masked_target(scope: Scope) -> str:
    """The request's path and query with any ``token=`` value masked."""
    path: str = scope.get("path", "")
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{path}?{_TOKEN_PARAM.sub(_MASKED, query)}" if query else path


class BodyTooLarge(HTTPException):
    """413: raised from ``receive`` once a body without a (true) length passes the limit;
    FastAPI passes an HTTPException from reading the body on to the error handlers."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the {limit:,}-byte limit")
        self.hint = f"send at most {limit:,} bytes (6 × tasks.max_input_bytes + 1 MiB)"


class BodyLimit:
    """Refuse a body over ``limit`` bytes with 413: from ``Content-Length`` at once,
    without reading it; a chunked body as soon as what arrived passes the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.limit:
            await self._refuse(send)
            return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, bounded, send)

    async def _refuse(self, send: Send) -> None:
        from orchestra_cli.api.errors import error_body
        from orchestra_cli.util import dumps

        refused = BodyTooLarge(self.limit)
        body = dumps(error_body(refused.detail, refused.hint))
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        headers.append((b"content-length", str(len(body.encode())).encode()))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body.encode()})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class AccessLog:
    """One JSON log line per request (and per WebSocket, when it ends): method, path
    with the token masked, status, duration in ms."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: list[int] = []

        async def watched(message: Message) -> None:
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                status.append(int(message["status"]))
            elif kind == "websocket.accept":
                status.append(101)
            elif kind == "websocket.close" and not status:
                status.append(403)  # closed before the handshake: refused
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except BaseException:
            status.append(500)
            raise
        finally:
            self._line(scope, status[0] if status else 500, started)

    @staticmethod
    def _line(scope: Scope, status: int, started: float) -> None:
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        target = masked_target(scope)
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        extra: dict[str, Any] = {
            "method": method,
            "path": target,
            "status": status,
            "duration_ms": duration_ms,
        }
        access_log.info("%s %s %d %.1fms", method, target, status, duration_ms, extra=extra)
