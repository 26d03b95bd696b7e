"""Health checks that talk each service's own protocol, not just TCP.

Each returns None when the service answers properly, else a short reason.
An open port is not enough: RabbitMQ accepts TCP before it accepts logins,
and Vault listens before it is unsealed.
"""

from __future__ import annotations

import socket

TIMEOUT = 2.0


def redis_ping(host: str, port: int, timeout: float = TIMEOUT) -> str | None:
    """``PING`` → ``+PONG`` over a raw socket (no client library needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(64)
    except OSError as exc:
        return _reason(exc)
    if reply.startswith(b"+PONG"):
        return None
    return f"unexpected reply {reply[:40]!r}"


def amqp_login(host: str, port: int, timeout: float = TIMEOUT) -> str | None:
    """Open and close an AMQP connection as guest (what the broker URL will do)."""
    if (reason := _tcp(host, port, timeout)) is not None:
        return reason  # cheap pre-check: no pika import or log noise while booting
    import logging

    import pika
    import pika.exceptions
    from pika.adapters.utils.connection_workflow import AMQPConnectorException

    pika_log = logging.getLogger("pika")
    level = pika_log.level
    # pika logs every refused attempt at ERROR; while waiting those are expected
    pika_log.setLevel(logging.CRITICAL)
    try:
        params = pika.ConnectionParameters(
            host=host,
            port=port,
            credentials=pika.PlainCredentials("guest", "guest"),
            connection_attempts=1,
            socket_timeout=timeout,
            stack_timeout=timeout,  # the whole handshake: a hung broker answers nothing
            blocked_connection_timeout=timeout,
            heartbeat=0,
        )
        connection = pika.BlockingConnection(params)
        connection.close()
    except (pika.exceptions.AMQPError, AMQPConnectorException, OSError) as exc:
        return _reason(exc)
    finally:
        pika_log.setLevel(level)
    return None


def vault_health(host: str, port: int, timeout: float = TIMEOUT) -> str | None:
    """``GET /v1/sys/health``: 200 means initialized, unsealed and active."""
    import urllib.error
    import urllib.request

    url = f"http://{host}:{port}/v1/sys/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
    except (urllib.error.URLError, OSError) as exc:
        return _reason(exc)
    if status == 200:
        return None
    return {429: "standby", 501: "not initialized", 503: "sealed"}.get(status, f"HTTP {status}")


def _tcp(host: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return _reason(exc)


def _reason(exc: BaseException) -> str:
    inner = getattr(exc, "reason", None)  # urllib wraps the socket error
    if isinstance(inner, BaseException):
        exc = inner
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:120]
