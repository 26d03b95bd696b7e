"""Running the app under uvicorn: bind, announce the URL once listening, stop on a signal.

uvicorn handles SIGINT/SIGTERM itself (graceful shutdown; a second Ctrl-C
forces) and re-raises the signal once it has stopped; the handlers installed
here only record it, so the command can return its exit code instead of dying.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from orchestra_cli.errors import ExitStatus, UsageError

GRACEFUL_SHUTDOWN_SECONDS = 5  # open WebSockets get this long to close
UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access")
_TOKEN_PARAM = re.compile(r"([?&]token=)[^&\s\"']+")


class _RedactFilter(logging.Filter):
    """Masks secrets in uvicorn's own log lines: a WebSocket URL carries ``?token=``."""

    def filter(self, record: logging.LogRecord) -> bool:
        # args stay a tuple: uvicorn's access formatter unpacks them
        if isinstance(record.args, tuple):
            record.args = tuple(_mask(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _mask(record.msg)
        return True


class _DeniedHandshakeFilter(logging.Filter):
    """Drops uvicorn's error for a WebSocket the app refused on purpose (a bad token, an
    unknown id): it answered the handshake with an HTTP error, which uvicorn's
    websockets implementation counts as 'returned without completing handshake'."""

    def filter(self, record: logging.LogRecord) -> bool:
        from orchestra_cli.api.stream import DENIED

        return not (DENIED.get() and "without completing handshake" in str(record.msg))


def _mask(text: str) -> str:
    from orchestra_cli.logs import redact

    return redact(_TOKEN_PARAM.sub(r"\1***", text))


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0 picks a free one); UsageError if it cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise UsageError(f"cannot resolve {host}: {exc}", "check --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            "choose another --port or stop what is using it",
        ) from None
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """A uvicorn server that calls ``on_listening`` once the socket accepts connections."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_listening()


def serve(app: Any, sock: socket.socket, *, verbose: bool, on_listening: Callable[[], None]) -> int:
    """Serve ``app`` on ``sock`` until SIGINT/SIGTERM; 130 after Ctrl-C, else 0."""
    received: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, record) for sig in (signal.SIGINT, signal.SIGTERM)}
    config = uvicorn.Config(
        app,
        log_level="info" if verbose else "warning",
        # the app's own access log (api.middleware) writes one JSON line per request
        access_log=False,
        # uvicorn's lines go to this process's handlers (the JSON log, stderr), not its own
        log_config=None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
    )
    for name in UVICORN_LOGGERS:  # Config() has just configured them
        logging.getLogger(name).addFilter(_RedactFilter())
    logging.getLogger("uvicorn.error").addFilter(_DeniedHandshakeFilter())
    try:
        _Server(config, on_listening).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return ExitStatus.INTERRUPTED if signal.SIGINT in received else ExitStatus.OK
