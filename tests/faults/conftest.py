"""Fault injection against real services: hostile messages, outages, bad input.

Each test isolates itself as the services tests do (its own Redis key prefix
and RabbitMQ queue prefix, deleted afterwards); an outage is a server or a
proxy the test starts and stops itself — the shared services never go down.
A missing service skips on a laptop and fails when ``CI`` is set.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.contract.conftest import AMQP_URL
from tests.services.conftest import svc as svc  # Redis + RabbitMQ under a prefix of its own
from tests.support import service_reachable, wait_until


def publish_with_headers(
    physical_queue: str, body: bytes, headers: dict[str, Any], **props: Any
) -> None:
    """Publish straight to a queue with any headers and properties (another client)."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        conn.channel().basic_publish(
            "", physical_queue, body, pika.BasicProperties(headers=headers, **props)
        )
    finally:
        conn.close()


def has_consumer(b: Any, queue: str) -> bool:
    """Whether a consumer is on ``queue`` (a process connects after it says it runs)."""
    info = b.broker.health([queue])["queues"].get(queue)
    return bool(info and info["consumers"])


class PrivateRedis:
    """A redis-server of the test's own, without persistence, on a free port: paused
    (SIGSTOP), continued, or restarted — which loses everything it held."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.server = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        server = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        wait_until(
            lambda: service_reachable("127.0.0.1", self.port), timeout=10, what="redis-server"
        )
        return server

    def restart(self) -> None:
        self.stop()
        self.server = self._start()

    def stop(self) -> None:
        os.kill(self.server.pid, signal.SIGCONT)
        self.server.terminate()
        self.server.wait(timeout=10)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    if not shutil.which("redis-server"):
        if os.environ.get("CI"):
            pytest.fail("redis-server not installed (CI must run the outage tests)")
        pytest.skip("redis-server not installed")
    redis = PrivateRedis()
    try:
        yield redis
    finally:
        redis.stop()
