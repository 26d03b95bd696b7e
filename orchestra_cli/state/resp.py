"""A small Redis client for the state store's reads, without importing redis-py.

``orchestra task get`` and ``task list`` are one-shot processes: importing
redis-py (8.x pulls in asyncio, OpenTelemetry hooks and importlib.metadata)
was ~70 ms of their ~330 ms with 100,000 tasks in state. Their reads (HGETALL,
ZRANGE, ZRANGEBYLEX, ZREVRANGEBYSCORE, XRANGE, pipelined HGETALL / ZCARD) go
through this client instead: RESP2 over a plain TCP socket, replies parsed by
``hiredis`` (redis-py's own C parser), one connection per thread, opened on
first use. Writes, scripts, blocking stream reads and ``rediss://`` URLs stay
on redis-py. (redis-py 8.1 imports OpenTelemetry's metrics SDK when it is
installed: ~80 ms here, so a `task get` that read its tree's events through
redis-py took 4x the import floor.)
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis

from orchestra_cli.util import PerThread


class RespError(Exception):
    """An error reply from the server."""


class RespConnectionError(ConnectionError):
    """The connection failed, timed out or was closed, or the server cannot answer yet
    (loading, busy script, too many clients): safe to retry."""


# Error replies that mean "not now" rather than "no": retried, as redis-py does.
_TRANSIENT = ("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "ERR max number of clients")


def supported(url: str) -> bool:
    """Plain ``redis://host[:port][/db]`` URLs only; TLS, unix sockets and URL options
    (``?db=…``) stay on redis-py, which reads them all."""
    parts = urlsplit(url)
    return parts.scheme == "redis" and not parts.query


def _pack(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class LiteRedis:
    """The read commands the state store needs, with redis-py's signatures and results
    (``decode_responses=True``)."""

    def __init__(
        self, url: str, *, socket_timeout: float, connect_timeout: float, client_name: str
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "localhost"
        self.port = parts.port or 6379
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.db = int(parts.path.strip("/") or 0)
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.client_name = client_name
        self._socks = PerThread(self._connect, socket.socket.close)

    # -- the connection ----------------------------------------------------------
    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout)
        except OSError as exc:
            where = f"{self.host}:{self.port}"
            raise RespConnectionError(f"Error connecting to {where}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.socket_timeout)
        setup: list[tuple[Any, ...]] = []
        if self.password is not None:
            auth = (self.username, self.password) if self.username else (self.password,)
            setup.append(("AUTH", *auth))
        if self.db:
            setup.append(("SELECT", self.db))
        setup.append(("CLIENT", "SETNAME", self.client_name))
        for reply in self._exchange(sock, setup):
            if isinstance(reply, RespError):
                sock.close()
                raise reply
        return sock

    def _drop(self, sock: socket.socket) -> None:
        self._socks.drop()
        sock.close()  # also when it is not (yet) this thread's

    def _exchange(self, sock: socket.socket, commands: list[tuple[Any, ...]]) -> list[Any]:
        reader = hiredis.Reader(encoding="utf-8", replyError=RespError)
        try:
            sock.sendall(b"".join(_pack(c) for c in commands))
            replies: list[Any] = []
            while len(replies) < len(commands):
                reply = reader.gets()
                if reply is False:
                    data = sock.recv(65536)
                    if not data:
                        raise RespConnectionError("Connection closed by server")
                    reader.feed(data)
                    continue
                replies.append(reply)
        except (OSError, hiredis.ProtocolError, UnicodeDecodeError) as exc:
            self._drop(sock)  # timeouts included: a late reply must never be read as ours
            raise RespConnectionError(f"Redis at {self.host}:{self.port}: {exc}") from exc
        except BaseException:  # e.g. KeyboardInterrupt mid-reply: the socket is out of step
            self._drop(sock)
            raise
        for reply in replies:
            if isinstance(reply, RespError) and str(reply).startswith(_TRANSIENT):
                self._drop(sock)
                raise RespConnectionError(f"Redis at {self.host}:{self.port}: {reply}")
        return replies

    def execute(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send ``commands`` at once and return their replies; the first error reply raises."""
        replies = self._exchange(self._socks.get(), list(commands))
        for reply in replies:
            if isinstance(reply, RespError):
                raise reply
        return replies

    def close(self) -> None:
        self._socks.close_all()

    # -- commands ------------------------------------------------------------------
    def hgetall(self, key: str) -> dict[str, str]:
        return _pairs(self.execute(("HGETALL", key))[0])

    def zrange(self, key: str, start: int, end: int) -> list[str]:
        return list(self.execute(("ZRANGE", key, start, end))[0])

    def zrangebylex(
        self, key: str, min: str, max: str, start: int | None = None, num: int | None = None
    ) -> list[str]:
        limit = ("LIMIT", start, num) if start is not None and num is not None else ()
        return list(self.execute(("ZRANGEBYLEX", key, min, max, *limit))[0])

    def zrevrangebyscore(
        self,
        key: str,
        max: float | str,
        min: float | str,
        start: int | None = None,
        num: int | None = None,
        withscores: bool = False,
    ) -> list[Any]:
        args: tuple[Any, ...] = ("ZREVRANGEBYSCORE", key, max, min)
        if withscores:
            args += ("WITHSCORES",)
        if start is not None and num is not None:
            args += ("LIMIT", start, num)
        reply = self.execute(args)[0]
        if not withscores:
            return list(reply)
        return [(m, float(s)) for m, s in zip(reply[::2], reply[1::2], strict=True)]

    def xrange(
        self, key: str, min: str = "-", max: str = "+", count: int | None = None
    ) -> list[tuple[str, dict[str, str]]]:
        args: tuple[Any, ...] = ("XRANGE", key, min, max)
        if count is not None:
            args += ("COUNT", count)
        return [(entry_id, _pairs(fields)) for entry_id, fields in self.execute(args)[0]]

    def pipeline(self, transaction: bool = False) -> LitePipeline:
        return LitePipeline(self)


class LitePipeline:
    """Queued reads sent in one round trip (no MULTI: ``transaction`` must be False)."""

    def __init__(self, client: LiteRedis) -> None:
        self.client = client
        self.commands: list[tuple[Any, ...]] = []
        self.shapes: list[str] = []

    def hgetall(self, key: str) -> LitePipeline:
        self.commands.append(("HGETALL", key))
        self.shapes.append("pairs")
        return self

    def hget(self, key: str, field: str) -> LitePipeline:
        self.commands.append(("HGET", key, field))
        self.shapes.append("raw")
        return self

    def zcard(self, key: str) -> LitePipeline:
        self.commands.append(("ZCARD", key))
        self.shapes.append("int")
        return self

    def get(self, key: str) -> LitePipeline:
        self.commands.append(("GET", key))
        self.shapes.append("raw")
        return self

    def xrange(
        self, key: str, min: str = "-", max: str = "+", count: int | None = None
    ) -> LitePipeline:
        limit = ("COUNT", count) if count is not None else ()
        self.commands.append(("XRANGE", key, min, max, *limit))
        self.shapes.append("stream")
        return self

    def execute(self) -> list[Any]:
        if not self.commands:
            return []
        replies = self.client.execute(*self.commands)
        return [_SHAPES[shape](r) for r, shape in zip(replies, self.shapes, strict=True)]


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


_SHAPES: dict[str, Any] = {
    "pairs": _pairs,
    "int": int,
    "raw": lambda reply: reply,
    "stream": lambda reply: [(entry_id, _pairs(fields)) for entry_id, fields in reply],
}
